"""Datasets and transforms (registered into mmseg DATASETS / TRANSFORMS)."""
from . import synthetic  # noqa: F401
from . import transforms  # noqa: F401
