"""TransCAM classification / CAM head on Conformer features.

liruiwen/TransCAM ``network/conformer.py::Net`` and ``train_TransCAM.py``:

* ``conv_cls_head``: 3x3 conv (pad 1) on the final CNN map -> ``x_conv``
  (B, C + 1, h, w), no ReLU; ``conv_logits`` = its spatial mean;
* ``trans_cls_head``: Linear on the class token after ``trans_norm``
  (applied by the backbone) -> ``trans_logits`` (B, C + 1);
* loss = ONE multilabel soft margin on ``(conv_logits + trans_logits)``
  without channel 0 (the logits are summed first, not two losses);
* CNN CAM = ``x_conv`` without channel 0; the transformer-attention
  refinement is :class:`TransCAMRefiner`.

Class layout: ``num_classes`` is the number of foreground classes C (20 for
VOC). Both heads have C + 1 outputs like the original's hard-coded 21:
channel 0 is the slot the original reserves for background, computed but
never trained and dropped from logits and CAMs; channel ``k + 1`` is
foreground class ``k``. So an original checkpoint (21 outputs) loads as
``num_classes=20``.
"""
from typing import Dict, List, Optional

import torch.nn as nn
import torch.nn.functional as F
from mmengine.model import BaseModule
from mmengine.model.weight_init import trunc_normal_
from torch import Tensor

from mmseg.registry import MODELS


@MODELS.register_module()
class TransCAMHead(BaseModule):
    """TransCAM CNN-CAM head + class-token head.

    Args:
        num_classes (int): foreground classes C; the layers have C + 1
            outputs (channel 0: the original's never-trained slot).
        in_channels (int): channels of the final CNN map (Conformer-S
            1024, ``Conformer.out_channels``).
        embed_dims (int): token dims D (Conformer-S 384).
        init_cfg (dict, optional): mmengine init config. Default: None.
    """

    # reads no attention maps
    attn_head_mean_only = True

    def __init__(self,
                 num_classes: int,
                 in_channels: int,
                 embed_dims: int,
                 init_cfg: Optional[dict] = None):
        super().__init__(init_cfg=init_cfg)
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError('TransCAMHead: num_classes (foreground classes, '
                             f'e.g. 20 for VOC) must be >= 1, got '
                             f'{num_classes!r}')
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.embed_dims = embed_dims
        self.conv_cls_head = nn.Conv2d(
            in_channels, num_classes + 1, kernel_size=3, padding=1)
        self.trans_cls_head = nn.Linear(embed_dims, num_classes + 1)

    def init_weights(self):
        """The original's: Linear trunc-normal(0.02), zero bias; conv Kaiming
        normal (fan_out, ReLU), PyTorch's default bias."""
        if self.init_cfg is not None:
            super().init_weights()
            return
        trunc_normal_(self.trans_cls_head.weight, std=.02)
        nn.init.zeros_(self.trans_cls_head.bias)
        nn.init.kaiming_normal_(
            self.conv_cls_head.weight, mode='fan_out', nonlinearity='relu')

    # ------------------------------------------------------------------
    def forward(self, feats: dict) -> Dict[str, Tensor]:
        """Both heads with the original's C + 1 channels (0 = unused slot).

        Args:
            feats (dict): Conformer features: ``cnn_feat`` (B, C_cnn, h, w),
                ``cls_tokens`` (B, 1, D) after ``trans_norm``.

        Returns:
            dict: ``x_conv`` (B, C + 1, h, w) CNN CAMs; ``conv_logits`` and
            ``trans_logits`` (B, C + 1).
        """
        x_conv = self.conv_cls_head(feats['cnn_feat'])
        return dict(
            x_conv=x_conv,
            conv_logits=F.adaptive_avg_pool2d(x_conv, 1).flatten(1),
            trans_logits=self.trans_cls_head(feats['cls_tokens'][:, 0]))

    def train_logits(self, feats: dict) -> Dict[str, Tensor]:
        """Foreground logits: ``conv_logits``, ``trans_logits`` (B, C)."""
        out = self(feats)
        return dict(conv_logits=out['conv_logits'][:, 1:],
                    trans_logits=out['trans_logits'][:, 1:])

    def loss(self, feats: dict, img_labels: Tensor) -> Dict[str, Tensor]:
        """``loss_cls`` = MLSM(conv_logits + trans_logits, labels).

        Args:
            feats (dict): Conformer features (see :meth:`forward`).
            img_labels (Tensor): (B, C) multi-hot.
        """
        if img_labels.dim() != 2 or img_labels.shape[1] != self.num_classes:
            raise ValueError(
                f'TransCAMHead: labels must be (B, {self.num_classes}) '
                f'multi-hot (foreground only), got {tuple(img_labels.shape)}')
        out = self(feats)
        logits = (out['conv_logits'] + out['trans_logits'])[:, 1:]
        return dict(loss_cls=F.multilabel_soft_margin_loss(
            logits, img_labels.to(logits)))

    # ------------------------------------------------------------------
    def cam_attn_layers(self, num_layers: int) -> List[int]:
        """The CNN CAM needs no attention (the refiner asks for its own)."""
        return []

    def predict_cams(self, feats: dict) -> Dict[str, Tensor]:
        """CNN-branch CAMs (``method='convcam'``, no ReLU).

        Returns:
            dict: ``cams`` (B, C, h, w) and ``logits`` (B, C) = foreground
            ``conv_logits + trans_logits`` (what the loss trains).
        """
        out = self(feats)
        return dict(
            cams=out['x_conv'][:, 1:],
            logits=(out['conv_logits'] + out['trans_logits'])[:, 1:])
