"""Segmenter's upsample-and-crop for mask-transformer decode heads.

The official Segmenter wrapper (rstrudel/segmenter ``segm/model/
segmenter.py``, also hosting DEPICT and WeakTr's online retraining)
upsamples the patch-level masks bilinearly to the *padded* size
``(h * patch_size, w * patch_size)`` and crops the bottom/right to the
target size. Resizing straight to a size that is not a multiple of the
patch size (mmseg's ``BaseDecodeHead``) is not the same.
"""
import math
from typing import List

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from mmseg.models.losses import accuracy
from mmseg.utils import SampleList


class SegmenterUpsampleMixin:
    """``predict_by_feat`` / ``loss_by_feat`` of a ``BaseDecodeHead`` with
    Segmenter's upsampling. Needs ``self.patch_size`` and
    ``self.align_corners``.

    ``loss_by_feat`` computes ``BaseDecodeHead``'s losses and ``acc_seg`` on
    the upsampled, cropped logits without its second ``resize`` (an exact
    identity there that would copy the full-resolution logits, forward and
    backward: 315 MB for 2 x 150 classes x 512 x 512).
    """

    def upsample_and_crop(self, masks: Tensor, size) -> Tensor:
        """Bilinear to the padded size, then crop.

        Args:
            masks (Tensor): patch-level masks, (B, C, h, w).
            size (tuple[int]): target (H, W), with ceil(H / patch_size) = h
                and ceil(W / patch_size) = w.

        Returns:
            Tensor: (B, C, H, W).
        """
        h, w = masks.shape[-2:]
        H, W = int(size[0]), int(size[1])
        P = self.patch_size
        expected = (math.ceil(H / P), math.ceil(W / P))
        if expected != (h, w):
            raise ValueError(
                f'{type(self).__name__}: target size {(H, W)} does not fit '
                f'the {h}x{w} mask grid with patch_size={P} (expected a '
                f'grid of {expected}). Set decode_head.patch_size to the '
                "backbone's patch size.")
        masks = F.interpolate(
            masks,
            size=(h * P, w * P),
            mode='bilinear',
            align_corners=self.align_corners)
        return masks[..., :H, :W]

    @staticmethod
    def target_size(batch_img_metas: List[dict]):
        """As ``BaseDecodeHead.predict_by_feat``: ``img_shape`` for slide
        windows (a ``torch.Size``), else ``pad_shape``, else ``img_shape``."""
        meta = batch_img_metas[0]
        if isinstance(meta['img_shape'], torch.Size):
            return meta['img_shape'][:2]
        if 'pad_shape' in meta:
            return meta['pad_shape'][:2]
        return meta['img_shape'][:2]

    def predict_by_feat(self, seg_logits: Tensor,
                        batch_img_metas: List[dict]) -> Tensor:
        """(B, C, h, w) masks -> (B, C, H, W) logits at the target size."""
        return self.upsample_and_crop(seg_logits,
                                      self.target_size(batch_img_metas))

    def loss_by_feat(self, seg_logits: Tensor,
                     batch_data_samples: SampleList) -> dict:
        """Upsample (B, C, h, w) masks to the padded size, crop to the label
        size, then ``BaseDecodeHead``'s losses (``loss_decode``, optional
        pixel sampler, ``acc_seg``).

        Returns:
            dict[str, Tensor]: ``loss_*`` terms and ``acc_seg``.
        """
        seg_label = self._stack_batch_gt(batch_data_samples)  # (B, 1, H, W)
        seg_logits = self.upsample_and_crop(seg_logits, seg_label.shape[2:])
        seg_weight = None
        if self.sampler is not None:
            seg_weight = self.sampler.sample(seg_logits, seg_label)
        seg_label = seg_label.squeeze(1)
        losses_decode = self.loss_decode if isinstance(
            self.loss_decode, nn.ModuleList) else [self.loss_decode]
        loss = dict()
        for loss_decode in losses_decode:
            value = loss_decode(
                seg_logits,
                seg_label,
                weight=seg_weight,
                ignore_index=self.ignore_index)
            name = loss_decode.loss_name
            loss[name] = value if name not in loss else loss[name] + value
        loss['acc_seg'] = accuracy(
            seg_logits, seg_label, ignore_index=self.ignore_index)
        return loss


__all__ = ['SegmenterUpsampleMixin']
