"""Metrics (registered into mmseg METRICS)."""
from . import pseudo_label_writer  # noqa: F401
