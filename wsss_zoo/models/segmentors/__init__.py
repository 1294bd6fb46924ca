"""Segmentors of wsss_zoo (one component per file)."""
from .cam_segmentor import CAMSegmentor  # noqa: F401
from .cam_tta import CAMTTAModel  # noqa: F401
