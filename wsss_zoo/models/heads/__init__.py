"""Heads of wsss_zoo (one component per file)."""
from .depict_head import DEPICTHead  # noqa: F401
from .mct_head import MCTHead  # noqa: F401
from .tscam_head import TSCAMHead  # noqa: F401
from .weaktr_gcd_head import WeakTrGCDHead  # noqa: F401
from .weaktr_head import WeakTrHead  # noqa: F401
from .transcam_head import TransCAMHead  # noqa: F401
