"""Heads of wsss_zoo (one component per file)."""
from .depict_head import DEPICTHead  # noqa: F401
from .mct_head import MCTHead  # noqa: F401
