"""Multi-scale + flip CAMs of a :class:`CAMSegmentor`, batched on the device.

The original CAM scripts (e.g. MCTformer ``engine.generate_attention_maps_ms``)
loop over images and over views (``[s1, flip(s1), s2, flip(s2), ...]``) one
forward pass at a time. :func:`batched_ms_cams` runs all views of a batch at
one scale in ONE forward pass (the image and its flip stacked, 2B images;
``max_images_per_pass`` takes the batch in chunks instead, which bounds the
memory and is faster on CPU);
:func:`per_image_ms_cams` is that original loop. Both take the raw CAMs from
``CAMSegmentor.raw_cams`` and sum them in the view order of
:func:`wsss_zoo.models.utils.cam.aggregate_views` (the batched path adds
each scale's views to a running sum with ``add_view``, the same float
summation), so they compute the same thing; only batching differs.
:func:`cams_to_masks` normalises and thresholds as pseudo-label generation
does.

Images are resized on the device with bicubic ``F.interpolate`` to
``(round(H * s), round(W * s))`` (the original resizes PIL images with
``CUBIC`` to the same size while loading).
"""
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from wsss_zoo.models.utils.cam import (add_view, aggregate_views,
                                       cams_to_mask, normalize_cams)


def scaled_size(size: Tuple[int, int], scale: float) -> Tuple[int, int]:
    """(round(H * s), round(W * s)), at least 1 pixel per side."""
    H, W = size
    return max(1, int(round(H * scale))), max(1, int(round(W * scale)))


def resize_images(images: Tensor, scale: float) -> Tensor:
    """Bicubic resize (align_corners False): (B, 3, H, W) -> (B, 3, h, w)."""
    size = scaled_size(images.shape[-2:], scale)
    if size == tuple(images.shape[-2:]):
        return images
    return F.interpolate(
        images, size=size, mode='bicubic', align_corners=False)


def _check(scales: Sequence[float], images: Tensor):
    if not scales:
        raise ValueError('multi-scale CAMs need at least one scale, e.g. '
                         'scales=[1.0]')
    if any(s <= 0 for s in scales):
        raise ValueError(f'scales must be > 0, got {list(scales)}')
    if images.dim() != 4:
        raise ValueError('images must be a (B, 3, H, W) tensor, got shape '
                         f'{tuple(images.shape)}')


def batched_ms_cams(segmentor,
                    images: Tensor,
                    scales: Sequence[float],
                    flip: bool = True,
                    labels: Optional[Tensor] = None,
                    max_images_per_pass: Optional[int] = None) -> Tensor:
    """Summed multi-scale (+ flip) CAMs, one forward pass per scale.

    Args:
        segmentor (CAMSegmentor): model with ``raw_cams``.
        images (Tensor): normalised images, (B, 3, H, W), on the device.
        scales (Sequence[float]): e.g. ``[1.0, 0.5, 1.5, 2.0]``.
        flip (bool): add the horizontal flip of every scale. Default: True.
        labels (Tensor, optional): (B, C) multi-hot, applied per view.
        max_images_per_pass (int, optional): at most this many images per
            forward pass. The batch is then taken in chunks of
            ``N // 2`` images (``N`` without flip), each chunk through
            every scale (its views and their flips in one pass) before the
            next, so only one chunk's resized images and CAMs are alive at
            a time; on CPU this also keeps the attention tensors
            cache-sized. None: the whole batch in one pass per scale. The
            CAMs do not depend on it (up to float rounding of batched
            kernels).

    Returns:
        Tensor: ``sum_cam`` (B, C, H, W), un-normalised.
    """
    _check(scales, images)
    if max_images_per_pass is not None and (
            isinstance(max_images_per_pass, bool)
            or not isinstance(max_images_per_pass, int)
            or max_images_per_pass < 1):
        raise ValueError('max_images_per_pass must be None or an int >= 1, '
                         f'got {max_images_per_pass!r}')
    if max_images_per_pass is None:
        return _ms_cams_per_scale(segmentor, images, scales, flip, labels,
                                  None)
    per_chunk = max(1, max_images_per_pass // (2 if flip else 1))
    out = []
    for start in range(0, images.shape[0], per_chunk):
        end = start + per_chunk
        out.append(
            _ms_cams_per_scale(segmentor, images[start:end], scales, flip,
                               None if labels is None else labels[start:end],
                               max_images_per_pass))
    return torch.cat(out)


def _ms_cams_per_scale(segmentor, images: Tensor, scales: Sequence[float],
                       flip: bool, labels: Optional[Tensor],
                       max_images_per_pass: Optional[int]) -> Tensor:
    """:func:`batched_ms_cams` of one chunk: per scale the chunk and its
    flip (2B images) in one pass, split further only when 2B is above
    ``max_images_per_pass`` (a limit of 1 with flip)."""
    B = images.shape[0]
    size = images.shape[-2:]
    total = None  # running sum in the view order [s1, flip(s1), s2, ...]
    for scale in scales:
        x = resize_images(images, scale)
        batch = torch.cat([x, x.flip(dims=(-1, ))]) if flip else x
        del x
        if max_images_per_pass is None or max_images_per_pass >= len(batch):
            cams, _ = segmentor.raw_cams(batch)  # (B or 2B, C, h, w)
        else:
            cams = torch.cat([
                segmentor.raw_cams(chunk)[0]
                for chunk in batch.split(max_images_per_pass)
            ])
        del batch
        total = add_view(total, cams[:B], False, size, labels)
        if flip:
            total = add_view(total, cams[B:], True, size, labels)
    return total


def per_image_ms_cams(segmentor,
                      images: Tensor,
                      scales: Sequence[float],
                      flip: bool = True,
                      labels: Optional[Tensor] = None) -> Tensor:
    """The original loop: one image, one view per forward pass.

    Args and Returns: as :func:`batched_ms_cams`.
    """
    _check(scales, images)
    out = []
    for i in range(images.shape[0]):
        views: List[Tensor] = []
        flipped: List[bool] = []
        for scale in scales:
            x = resize_images(images[i:i + 1], scale)
            for flip_view in ((False, True) if flip else (False, )):
                view = x.flip(dims=(-1, )) if flip_view else x
                views.append(segmentor.raw_cams(view)[0])
                flipped.append(flip_view)
        out.append(
            aggregate_views(views, flipped, images.shape[-2:],
                            None if labels is None else labels[i:i + 1]))
    return torch.cat(out)


def cams_to_masks(sum_cams: Tensor, labels: Optional[Tensor],
                  bg_thresh: float) -> Tuple[Tensor, Tensor]:
    """Per-class min-max normalisation and background threshold.

    Args:
        sum_cams (Tensor): (B, C, H, W) from the functions above.
        labels (Tensor, optional): (B, C) classes kept (None: all).
        bg_thresh (float): background score.

    Returns:
        tuple: normalised CAMs (B, C, H, W) and masks (B, H, W) long,
        0 = background, k + 1 = class k.
    """
    norm = normalize_cams(sum_cams.float(), labels)
    return norm, cams_to_mask(norm, bg_thresh)


def compare_masks(norm_a: Tensor, mask_a: Tensor, norm_b: Tensor,
                  mask_b: Tensor, bg_thresh: float,
                  tie_tol: float = 1e-2) -> dict:
    """Compare two paths' masks; tell rounding ties from real differences.

    Two float computations of the same CAMs (batched vs per-image kernels)
    differ by rounding, so a pixel whose two best scores are within that
    rounding can take either label. A mismatch counts as a *tie* when, in
    path b's scores ``[bg_thresh, norm_b]``, the labels of both paths score
    within ``tie_tol`` of each other.

    Args:
        norm_a, norm_b (Tensor): normalised CAMs, (B, C, H, W).
        mask_a, mask_b (Tensor): masks, (B, H, W), 0 = background.
        bg_thresh (float): background score used for the masks.
        tie_tol (float): largest score gap counted as a tie. Default: 1e-2.

    Returns:
        dict: ``identical`` (every pixel equal), ``mismatch_pixels``,
        ``pixels``, ``mismatch_at_ties_only`` (every mismatch is a tie),
        ``max_abs_norm_cam_diff``.
    """
    B, _, H, W = norm_b.shape
    diff = mask_a != mask_b
    ties_only = True
    if diff.any():
        bg = norm_b.new_full((B, 1, H, W), float(bg_thresh))
        scores = torch.cat([bg, norm_b.float()], dim=1)
        gap = (scores.gather(1, mask_a[:, None]) -
               scores.gather(1, mask_b[:, None]))[:, 0].abs()
        ties_only = bool((gap[diff] <= tie_tol).all())
    return dict(
        identical=not bool(diff.any()),
        mismatch_pixels=int(diff.sum()),
        pixels=int(diff.numel()),
        mismatch_at_ties_only=ties_only,
        tie_tol=float(tie_tol),
        max_abs_norm_cam_diff=float((norm_a.float() -
                                     norm_b.float()).abs().max()))


__all__ = [
    'scaled_size', 'resize_images', 'batched_ms_cams', 'per_image_ms_cams',
    'cams_to_masks', 'compare_masks'
]
