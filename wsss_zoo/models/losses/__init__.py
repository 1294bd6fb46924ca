"""Losses of wsss_zoo (one component per file)."""
from .gradient_clipping_loss import GradientClippingLoss  # noqa: F401
