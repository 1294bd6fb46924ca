"""MCTformer+ encoder (Xu et al., TPAMI 2024, arXiv 2308.03005).

Same multi-class-token encoder as :class:`MCTformerV2`
(xulianuwa/MCTformer HEAD ``models.py::MCTformerPlus``) except:

* separate positional tables: ``pos_embed_cls`` (1, C, D) added to the class
  tokens and ``pos_embed_pat`` (1, N, D) added to the patch tokens, N from
  the training size (``--input-size``, 448 in the paper);
* ``pos_embed_pat`` is added as stored in training and bicubically resized
  (size-based, no +0.1) in eval mode (:func:`mct_plus_patch_pos_embed`);
* the class tokens after EVERY block are returned (``cls_tokens_per_block``)
  for the contrastive class-token (CCT) loss of :class:`MCTHead`.

The original also keeps the parent's 1-class ``pos_embed``, never used; it is
not kept here (the converter reports it as dropped).
"""
from typing import Dict, Tuple

import torch
import torch.nn as nn
from torch import Tensor

from mmseg.registry import MODELS
from ..utils.pos_embed import (mct_plus_patch_pos_embed,
                               resize_pos_embed_bicubic,
                               upsample_pos_embed_nearest)
from .mct_vit import MCTEncoder


@MODELS.register_module()
class MCTformerPlus(MCTEncoder):
    """MCTformer+ multi-class-token encoder.

    Args: see :class:`MCTEncoder`; ``img_size`` is the training input size
    (the original's ``input_size``), which sets ``pos_embed_pat``.

    ``forward`` adds ``cls_tokens_per_block`` (L, B, C, D) to the features.
    """

    def _init_pos_embed(self):
        self.pos_embed_cls = nn.Parameter(
            torch.zeros(1, self.num_classes, self.embed_dims))
        self.pos_embed_pat = nn.Parameter(
            torch.zeros(1, self.num_patches, self.embed_dims))

    def _pos_embed_params(self):
        return [self.pos_embed_cls, self.pos_embed_pat]

    def _embed_tokens(self, patches: Tensor, img_hw: Tuple[int, int],
                      grid_hw: Tuple[int, int]) -> Tensor:
        """[cls tokens + pos_embed_cls, patches + pos_embed_pat], (B, C+P, D)."""
        patch_pos = mct_plus_patch_pos_embed(self.pos_embed_pat, grid_hw,
                                             self.training)
        patches = patches + patch_pos
        cls_tokens = self.cls_token + self.pos_embed_cls
        cls_tokens = cls_tokens.expand(patches.shape[0], -1, -1)
        return torch.cat([cls_tokens, patches], dim=1)

    def _per_block_hook(self, store):
        C = self.num_classes

        def hook(i, x):
            store.append(x[:, :C])

        return hook

    def _adapt_imagenet(self, sd: Dict[str, Tensor]) -> Dict[str, Tensor]:
        """DeiT -> MCTformer+: ``cls_token`` and ``pos_embed_cls`` repeat the
        single class token / class pos row C times; ``pos_embed_pat`` is the
        patch grid upsampled by nearest replication when the training grid is
        an integer multiple of it (HEAD ``main.py``: 14 -> 28), else by a
        size-based bicubic resize."""
        n_cls = self._class_rows(sd)
        if 'cls_token' in sd:
            sd['cls_token'] = sd['cls_token'].expand(
                1, self.num_classes, -1).clone()
        pos = sd.pop('pos_embed', None)
        if pos is not None and 'pos_embed_pat' not in sd:
            sd['pos_embed_cls'] = pos[:, :n_cls].expand(
                1, self.num_classes, -1).clone()
            patch_pos = pos[:, n_cls:]
            src = int(round(patch_pos.shape[1]**0.5))
            if self.grid_size % src == 0 and self.grid_size > src:
                sd['pos_embed_pat'] = upsample_pos_embed_nearest(
                    patch_pos, self.grid_size // src)
            else:
                sd['pos_embed_pat'] = resize_pos_embed_bicubic(
                    patch_pos, (self.grid_size, self.grid_size))
        return sd
