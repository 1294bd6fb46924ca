"""Runner extensions (registered into mmseg's HOOKS)."""
from . import hooks  # noqa: F401
