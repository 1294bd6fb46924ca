"""Models: every import below registers components into mmseg's MODELS."""
from . import (backbones, data_preprocessor, heads, refiners,  # noqa: F401
               segmentors)
