"""mmseg's ``VisionTransformer`` with Segmenter's self-attention.

The encoder of Segmenter (rstrudel/segmenter) and of the codebases built on
it (WeakTr's online retraining, DEPICT): mmseg's ViT, parameter for
parameter (so ``tools/model_converters/weaktr_gcd2mmseg.py`` /
``depict2mmseg.py`` output loads unchanged), whose attention layers are
:class:`~wsss_zoo.models.utils.attention.SegmenterSelfAttention`: fused
``scaled_dot_product_attention`` by default, and on the explicit path
(``materialize_all_attention``) the original's ``softmax((q k^T) * scale)``
bit for bit (mmseg's own layers scale q first, which rounds differently
unless the head width is a power of 4).
"""
from mmseg.models.backbones import VisionTransformer
from mmseg.registry import MODELS

from ..utils.attention import SegmenterSelfAttention


@MODELS.register_module()
class SegmenterVisionTransformer(VisionTransformer):
    """mmseg ``VisionTransformer`` (same arguments, parameters and outputs)
    with :class:`SegmenterSelfAttention` in every layer.

    Input (B, 3, H, W); outputs as mmseg's ViT (``out_indices`` feature maps
    (B, D, H / patch, W / patch)).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        SegmenterSelfAttention.convert(self)
