"""MCTformer patch-affinity CAM refinement (``--patch-attn-refine``).

xulianuwa/MCTformer ``engine.generate_attention_maps_ms``: the head-averaged
patch-to-patch attention is summed over layers (rows are not renormalised)
and applied once to every class map: ``refined[c, i] = sum_j A[i, j]
cam[c, j]``.
"""
from typing import Iterable, List, Optional

import torch
from mmengine.model import BaseModule
from torch import Tensor

from mmseg.registry import MODELS
from ..utils.attention import normalize_layer_indices


@MODELS.register_module()
class PatchAffinityRefiner(BaseModule):
    """Refine CAMs with summed patch-to-patch attention.

    Args:
        layers (Iterable[int], optional): layers whose attention is summed
            (negative indices allowed). None: all layers, as the original.
            Default: None.
        init_cfg (dict, optional): unused (no parameters). Default: None.
    """

    # reads attention maps only through their mean over heads
    attn_head_mean_only = True

    def __init__(self, layers: Optional[Iterable[int]] = None,
                 init_cfg: Optional[dict] = None):
        super().__init__(init_cfg=init_cfg)
        self.layers = None if layers is None else list(layers)

    def attn_layers(self, num_layers: int) -> List[int]:
        """Layers whose attention maps :meth:`forward` needs."""
        if self.layers is None:
            return list(range(num_layers))
        return normalize_layer_indices(self.layers, num_layers)

    def patch_affinity(self, feats: dict, num_classes: int) -> Tensor:
        """Head-averaged patch-to-patch attention summed over the layers.

        Args:
            feats (dict): encoder features with ``attn`` {layer: (B, heads,
                N, N)}, N = num_classes + P, class tokens first.
            num_classes (int): number of leading class tokens.

        Returns:
            Tensor: (B, P, P).
        """
        attn = feats['attn']
        num_layers = feats.get('num_layers')
        layers = (self.attn_layers(num_layers)
                  if num_layers is not None else sorted(attn))
        missing = [i for i in layers if i not in attn]
        if missing or not layers:
            raise KeyError(
                f'PatchAffinityRefiner needs the attention maps of layers '
                f'{layers}, but only {sorted(attn)} were captured')
        C = num_classes
        maps = torch.stack([attn[i].mean(dim=1)[:, C:, C:] for i in layers])
        return maps.sum(dim=0)

    def forward(self, cams: Tensor, feats: dict) -> Tensor:
        """Refine raw CAMs.

        Args:
            cams (Tensor): (B, C, h, w), C = number of class tokens.
            feats (dict): encoder features (see :meth:`patch_affinity`).

        Returns:
            Tensor: (B, C, h, w).
        """
        B, C, h, w = cams.shape
        affinity = self.patch_affinity(feats, C)  # (B, P, P)
        refined = affinity[:, None] @ cams.reshape(B, C, h * w, 1)
        return refined.reshape(B, C, h, w)
