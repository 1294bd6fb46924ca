"""Backbones of wsss_zoo (one component per file)."""
from .mct_vit import MCTformerV1, MCTformerV2  # noqa: F401
from .mct_plus_vit import MCTformerPlus  # noqa: F401
from .deit_cam import DeiTCAM  # noqa: F401
from .weaktr_vit import WeakTrViT  # noqa: F401
from .conformer import Conformer  # noqa: F401
from .segmenter_vit import SegmenterVisionTransformer  # noqa: F401
