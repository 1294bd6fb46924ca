"""Metrics (registered into mmseg METRICS)."""
from . import pseudo_label_writer  # noqa: F401
from . import cam_metric  # noqa: F401
