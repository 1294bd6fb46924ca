"""Refiners of wsss_zoo (one component per file)."""
from .patch_affinity import PatchAffinityRefiner  # noqa: F401
from .transcam_refiner import TransCAMRefiner  # noqa: F401
