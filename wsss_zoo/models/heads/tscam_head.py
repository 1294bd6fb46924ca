"""TS-CAM head: semantic maps from patch tokens, coupled with class-token
attention (Gao et al., "TS-CAM: Token Semantic Coupled Attention Map for
Weakly Supervised Object Localization", ICCV 2021).

vasgaowei/TS-CAM ``lib/models/deit.py::TSCAM.forward`` and
``tools_cam/train_cam.py::train_one_epoch``; the code, not the paper, is
reproduced:

* semantic maps S = 3x3 conv (D -> C, padding 1) on the final-normed patch
  tokens laid out on the h x w grid, (B, C, h, w); logits = GAP(S);
* loss: ``CrossEntropyLoss`` (mean) on single-label targets (the original);
  ``loss_type='multilabel'`` uses ``F.multilabel_soft_margin_loss`` instead,
  a wsss_zoo adaptation for multi-label data (VOC), not in the original;
* CAMs: a = head-averaged post-softmax attention, class-token row, patch
  columns, SUMMED over all layers (``cam_layers=None``), (B, 1, h, w);
  cams = a * S.detach(), (B, C, h, w). No ReLU, no normalisation (CAMs can
  be negative); CAMSegmentor min-max normalises per class afterwards.

Training needs no attention map: the loss reads only the logits, so every
layer runs fused attention (no ``loss_attn_layers``).
"""
from typing import Dict, List, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.model import BaseModule
from torch import Tensor

from mmseg.registry import MODELS
from ..utils.attention import normalize_layer_indices

_LOSS_TYPES = ('ce', 'multilabel')


@MODELS.register_module()
class TSCAMHead(BaseModule):
    """TS-CAM CAM head (on :class:`DeiTCAM` features).

    Args:
        num_classes (int): object classes C (no background).
        in_channels (int): token dims D.
        cam_layers (int | Sequence[int], optional): layers whose class-token
            attention is summed into the CAM. None: all layers (the
            original); an int K: the last K layers (more than the depth
            means all); a list: those layer indices (negatives count from
            the end). Default: None.
        loss_type (str): 'ce': cross-entropy on single-label images (the
            original; labels (B,) indices or (B, C) one-hot); 'multilabel':
            multi-label soft margin on (B, C) multi-hot labels (for VOC,
            not in the original). Default: 'ce'.
        loss_weight (float): weight of ``loss_cls``. Default: 1.0.
        init_cfg (dict, optional): mmengine init config. Default: None (the
            conv keeps PyTorch's default init, as the original).
    """

    def __init__(self,
                 num_classes: int,
                 in_channels: int,
                 cam_layers: Union[None, int, Sequence[int]] = None,
                 loss_type: str = 'ce',
                 loss_weight: float = 1.0,
                 init_cfg: Optional[dict] = None):
        super().__init__(init_cfg=init_cfg)
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f'TSCAMHead: num_classes must be an int >= 1, '
                             f'got {num_classes!r}')
        if loss_type not in _LOSS_TYPES:
            raise ValueError(f'TSCAMHead: loss_type must be one of '
                             f'{_LOSS_TYPES}, got {loss_type!r}')
        if isinstance(cam_layers, bool) or not (
                cam_layers is None or isinstance(cam_layers, int)
                or isinstance(cam_layers, (list, tuple))):
            raise TypeError(
                'TSCAMHead: cam_layers must be None (all layers), an int '
                f'(the last K layers) or a list of layer indices, got '
                f'{cam_layers!r}')
        if isinstance(cam_layers, int) and cam_layers < 1:
            raise ValueError(f'TSCAMHead: cam_layers as an int must be >= 1 '
                             f'(the last K layers), got {cam_layers}')
        if isinstance(cam_layers, (list, tuple)):
            if not cam_layers:
                raise ValueError('TSCAMHead: cam_layers list is empty; give '
                                 'at least one layer or None for all')
            cam_layers = list(cam_layers)
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.cam_layers = cam_layers
        self.loss_type = loss_type
        self.loss_weight = loss_weight
        # the original ``head``: semantic-aware maps on the patch grid
        self.semantic_conv = nn.Conv2d(
            in_channels, num_classes, kernel_size=3, stride=1, padding=1)

    # ------------------------------------------------------------------
    def semantic_maps(self, feats: dict) -> Tensor:
        """3x3 conv on the patch-token grid.

        Args:
            feats (dict): ``patch_tokens`` (B, P, D), ``hw`` (h, w).

        Returns:
            Tensor: semantic maps S, (B, C, h, w).
        """
        tokens = feats['patch_tokens']
        h, w = feats['hw']
        B, P, D = tokens.shape
        if P != h * w:
            raise ValueError(f'TSCAMHead: {P} patch tokens for a {h}x{w} '
                             'grid')
        grid = tokens.transpose(1, 2).reshape(B, D, h, w)
        return self.semantic_conv(grid)

    def train_logits(self, feats: dict) -> Dict[str, Tensor]:
        """Classification logits: ``{'logits': GAP(S)}``, (B, C)."""
        maps = self.semantic_maps(feats)
        return dict(logits=F.adaptive_avg_pool2d(maps, 1).flatten(1))

    def _class_indices(self, labels: Tensor) -> Tensor:
        """(B,) class indices from (B,) indices or (B, C) one-hot labels."""
        if labels.ndim == 1:
            return labels.long()
        if labels.ndim != 2 or labels.shape[1] != self.num_classes:
            raise ValueError(
                f'TSCAMHead: labels must be (B,) class indices or (B, '
                f'{self.num_classes}) one-hot, got {tuple(labels.shape)}')
        per_image = (labels > 0).sum(dim=1)
        if not bool((per_image == 1).all()):
            raise ValueError(
                "TSCAMHead(loss_type='ce'): the original TS-CAM loss is "
                'single-label cross-entropy, but images have '
                f'{per_image.tolist()} labels; use '
                "loss_type='multilabel' for multi-label data (e.g. VOC)")
        return labels.argmax(dim=1)

    def loss(self, feats: dict, img_labels: Tensor) -> Dict[str, Tensor]:
        """Image-level classification loss.

        Args:
            feats (dict): encoder features (``patch_tokens``, ``hw``).
            img_labels (Tensor): (B, C) multi-hot / one-hot, or (B,) class
                indices for ``loss_type='ce'``.

        Returns:
            dict[str, Tensor]: ``loss_cls`` (weighted, scalar).
        """
        logits = self.train_logits(feats)['logits']
        if self.loss_type == 'ce':
            loss = F.cross_entropy(logits, self._class_indices(img_labels))
        else:
            if img_labels.shape != logits.shape:
                raise ValueError(
                    f'TSCAMHead: multi-label targets must be (B, '
                    f'{self.num_classes}), got {tuple(img_labels.shape)}')
            loss = F.multilabel_soft_margin_loss(logits, img_labels.float())
        return dict(loss_cls=self.loss_weight * loss)

    # ------------------------------------------------------------------
    def cam_attn_layers(self, num_layers: int) -> List[int]:
        """Layers whose attention maps :meth:`predict_cams` needs."""
        if self.cam_layers is None:
            return list(range(num_layers))
        if isinstance(self.cam_layers, int):
            k = min(self.cam_layers, num_layers)
            return list(range(num_layers - k, num_layers))
        return normalize_layer_indices(self.cam_layers, num_layers)

    def token_attention(self, feats: dict) -> Tensor:
        """Class-token-to-patch attention summed over the CAM layers.

        Args:
            feats (dict): with ``attn`` {layer: (B, heads, N, N)},
                ``cls_tokens`` (B, T, D) (T prefix tokens), ``hw``,
                ``num_layers``.

        Returns:
            Tensor: (B, 1, h, w).
        """
        attn = feats['attn']
        layers = self.cam_attn_layers(feats['num_layers'])
        missing = [i for i in layers if i not in attn]
        if missing:
            raise KeyError(
                f'TSCAMHead needs the attention maps of layers {layers}, '
                f'but only {sorted(attn)} were captured: pass capture_layers='
                'cam_head.cam_attn_layers(num_layers) to the backbone')
        T = feats['cls_tokens'].shape[1]
        h, w = feats['hw']
        # class-token row, patch columns: (L, B, heads, P); mean over heads,
        # then sum over layers, in the original's order
        rows = torch.stack([attn[i][:, :, 0, T:] for i in layers])
        rows = rows.mean(dim=2).sum(dim=0)  # (B, P)
        return rows.reshape(rows.shape[0], 1, h, w)

    def predict_cams(self, feats: dict) -> Dict[str, Tensor]:
        """Raw CAMs, as the original eval-mode ``forward``.

        Args:
            feats (dict): encoder features with ``attn`` for
                :meth:`cam_attn_layers`.

        Returns:
            dict: ``cams`` (B, C, h, w) = token attention * S.detach() and
            ``logits`` (B, C) = GAP(S).
        """
        maps = self.semantic_maps(feats)
        logits = F.adaptive_avg_pool2d(maps, 1).flatten(1)
        cams = self.token_attention(feats) * maps.detach()
        return dict(cams=cams, logits=logits)
