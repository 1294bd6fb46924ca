"""Multi-class-token ViT encoder of WeakTr stage 1 (hustvl/WeakTr).

Zhu et al., "WeakTr: Exploring Plain Vision Transformer for
Weakly-supervised Semantic Segmentation" (``models.py::WeakTr``,
``vision_transformer.py``). WeakTr builds on MCTformer and shares its token
encoder exactly: C class tokens first, then the patch tokens; one
``pos_embed`` (1, C + N, D) resized by the DINO ``+ 0.1`` scale-factor rule
whenever the patch count differs OR the image is not square
(:func:`~wsss_zoo.models.utils.pos_embed.mct_patch_pos_embed`); pre-norm
timm blocks (LN eps 1e-6, exact GELU); no final LayerNorm. The fine-tuning
initialisation from DeiT (class token and class pos-embed row repeated C
times, size-based bicubic resize of the patch grid) is that of MCTformer's
``main.py`` too.

The one difference is what a layer returns: WeakTr's ``Block`` also returns
``o``, the attention-branch output after ``proj`` (and ``proj_drop``) and
before the residual add, which the V3 adaptive attention fusion pools. This
subclass captures it (as the output of the block's ``attn`` module) for the
same layers whose attention map is captured; nothing else changes.
"""
from functools import partial
from typing import Dict, Iterable, Optional

from torch import Tensor

from mmseg.registry import MODELS
from ..utils.attention import normalize_layer_indices
from .mct_vit import MCTEncoder


@MODELS.register_module()
class WeakTrViT(MCTEncoder):
    """WeakTr stage-1 encoder: the MCTformer token encoder + branch outputs.

    ``forward(x, capture_layers)`` returns the features of
    :class:`~wsss_zoo.models.backbones.mct_vit.MCTEncoder` plus
    ``attn_out`` {layer: (B, N, D)}, the attention-branch output ``O_l`` of
    every captured layer (N = C + P tokens, class tokens first). Layers that
    are not captured run fused attention and keep nothing.

    Args: see :class:`~wsss_zoo.models.backbones.mct_vit.MCTEncoder`
    (the original factory ``deit_small_WeakTr_patch16_224``: img_size 224,
    patch 16, embed_dims 384, 12 layers, 6 heads, mlp_ratio 4, qkv_bias,
    LN eps 1e-6, drop_path_rate 0.1 when training).
    """

    def forward(self, x: Tensor,
                capture_layers: Optional[Iterable[int]] = None) -> dict:
        """Encode images; keep attention maps and branch outputs on request.

        Args:
            x (Tensor): images, (B, 3, H, W), H and W >= patch_size.
            capture_layers (Iterable[int], optional): layers whose attention
                map and attention-branch output are returned (negative
                indices allowed). None: none (fused attention everywhere).

        Returns:
            dict: as :meth:`MCTEncoder.forward` (``cls_tokens`` (B, C, D),
            ``patch_tokens`` (B, P, D), ``hw``, ``attn`` {layer: (B, heads,
            N, N)}, ``num_layers``) and ``attn_out`` {layer: (B, N, D)}.
        """
        layers = normalize_layer_indices(capture_layers, self.num_layers)
        attn_out: Dict[int, Tensor] = {}

        def keep(layer, module, args, output):
            attn_out[layer] = output

        handles = [
            self.blocks[i].attn.register_forward_hook(partial(keep, i))
            for i in layers
        ]
        try:
            feats = super().forward(x, capture_layers=layers)
        finally:
            for handle in handles:
                handle.remove()
        feats['attn_out'] = attn_out
        return feats
