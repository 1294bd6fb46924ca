"""CAM maths shared by CAM heads, refiners and the stage-1 segmentor.

The multi-scale + flip aggregation and per-class min-max normalisation follow
``engine.generate_attention_maps_ms`` of MCTformer (xulianuwa/MCTformer):
each view's CAM is bilinearly resized (align_corners False) to the size of the
first view, multiplied by the image label, flipped back if it was flipped, and
the views are SUMMED (no average); then each labelled class is min-max
normalised with eps 1e-8 and the background is a constant threshold plane.
"""
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor


def upsample_cams(cams: Tensor, size: Tuple[int, int]) -> Tensor:
    """Bilinear resize, align_corners False: (B, C, h, w) -> (B, C, H, W)."""
    if tuple(cams.shape[-2:]) == tuple(size):
        return cams
    return F.interpolate(
        cams, size=tuple(size), mode='bilinear', align_corners=False)


def normalize_cams(cams: Tensor,
                   labels: Optional[Tensor] = None,
                   eps: float = 1e-8) -> Tensor:
    """Per image and class min-max: ``(a - min) / (max - min + eps)``.

    Args:
        cams (Tensor): (B, C, H, W).
        labels (Tensor, optional): (B, C) 0/1; classes with label 0 are set
            to 0. None: every class is kept.
        eps (float): added to the range. Default: 1e-8 (the original).

    Returns:
        Tensor: (B, C, H, W) in [0, 1].
    """
    flat = cams.flatten(2)
    lo = flat.min(dim=2).values[..., None, None]
    hi = flat.max(dim=2).values[..., None, None]
    norm = (cams - lo) / (hi - lo + eps)
    if labels is not None:
        norm = norm * (labels > 0).to(norm)[..., None, None]
    return norm


def aggregate_views(view_cams: Sequence[Tensor],
                    flipped: Sequence[bool],
                    size: Tuple[int, int],
                    labels: Optional[Tensor] = None) -> Tensor:
    """Sum of multi-scale / flipped views of the same images.

    Each view is resized to ``size`` (:func:`upsample_cams`), multiplied by
    ``labels`` when given (the original masks every view by the GT label
    before summing; masking after the sum gives the same result), flipped
    back along the last axis when ``flipped[i]``, and summed.

    Args:
        view_cams (Sequence[Tensor]): per view (B, C, h_i, w_i).
        flipped (Sequence[bool]): whether view i was flipped horizontally.
        size (tuple[int, int]): output (H, W), e.g. that of the scale-1 view.
        labels (Tensor, optional): (B, C) multi-hot mask applied per view.

    Returns:
        Tensor: (B, C, H, W), the un-normalised ``sum_cam``.
    """
    if len(view_cams) != len(flipped):
        raise ValueError(f'{len(view_cams)} views but {len(flipped)} flip '
                         'flags')
    if not view_cams:
        raise ValueError('aggregate_views needs at least one view')
    total = None
    for cams, flip in zip(view_cams, flipped):
        total = add_view(total, cams, flip, size, labels)
    return total


def add_view(total: Optional[Tensor], cams: Tensor, flipped: bool,
             size: Tuple[int, int],
             labels: Optional[Tensor] = None) -> Tensor:
    """One step of :func:`aggregate_views`: ``total`` + one view.

    The view (B, C, h, w) is resized to ``size``, masked by ``labels``,
    flipped back when ``flipped``, and added to ``total`` (B, C, H, W);
    ``total`` None starts the sum. Calling it view by view in the order of
    :func:`aggregate_views` gives the same floats, without keeping the views.
    """
    cams = upsample_cams(cams, size)
    if labels is not None:
        cams = cams * labels.to(cams)[..., None, None]
    if flipped:
        cams = cams.flip(dims=(-1, ))
    return cams if total is None else total + cams


def cams_to_mask(norm_cams: Tensor, bg_thresh: float) -> Tensor:
    """Argmax over [background plane = bg_thresh, CAMs].

    Args:
        norm_cams (Tensor): normalised CAMs, (B, C, H, W).
        bg_thresh (float): constant background score.

    Returns:
        LongTensor: (B, H, W); 0 = background, k + 1 = class k.
    """
    B, _, H, W = norm_cams.shape
    bg = norm_cams.new_full((B, 1, H, W), float(bg_thresh))
    return torch.cat([bg, norm_cams], dim=1).argmax(dim=1)


__all__ = [
    'upsample_cams', 'normalize_cams', 'aggregate_views', 'add_view',
    'cams_to_mask'
]
