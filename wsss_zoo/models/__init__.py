"""Models: every import below registers components into mmseg's MODELS."""
from . import (backbones, data_preprocessor, heads, refiners,  # noqa: F401
               segmentors)
from . import losses  # noqa: F401,E402
