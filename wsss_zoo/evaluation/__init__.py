"""Metrics (registered into mmseg METRICS)."""
