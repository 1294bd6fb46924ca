"""Models: every import below registers components into mmseg's MODELS."""
from . import backbones, heads, refiners, segmentors  # noqa: F401
