"""Box localisation from CAMs, as TS-CAM evaluates WSOL (CUB / ILSVRC).

vasgaowei/TS-CAM ``lib/cams_deit.py``: ``resize_cam``, ``get_bboxes``,
``get_topk_boxes`` and the IoU of ``cal_iou``. For each class a CAM is
resized to the crop size and min-max normalised (no eps), quantised to
uint8 by truncation, thresholded at ``int(cam_thr * max)`` (keep pixels
strictly above), and the bounding rectangle of the largest-area contour is
the box ``[x1, y1, x2, y2]`` (x along the width, exclusive end);
``[0, 0, 1, 1]`` when there is no contour. OpenCV is used for the contour
steps, as in the original. These are functions, not an mmseg metric: box
benchmarks need box annotations that mmseg's segmentation datasets do not
carry (see README, "TS-CAM", "Configs").
"""
from typing import List, Sequence, Tuple

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


def resize_normalize_cam(cams: Tensor, size: Tuple[int, int]) -> Tensor:
    """Bilinear resize (align_corners False) and per-map min-max, no eps.

    ``resize_cam`` of the original (``cv2.resize`` INTER_LINEAR, equal to
    torch bilinear within ~3e-7). A constant map gives NaN, as the original.

    Args:
        cams (Tensor): (..., h, w) maps.
        size (tuple[int, int]): output (H, W).

    Returns:
        Tensor: (..., H, W) in [0, 1].
    """
    lead = cams.shape[:-2]
    flat = cams.reshape(-1, 1, *cams.shape[-2:]).float()
    up = F.interpolate(
        flat, size=tuple(size), mode='bilinear', align_corners=False)
    lo = up.amin(dim=(-2, -1), keepdim=True)
    hi = up.amax(dim=(-2, -1), keepdim=True)
    out = (up - lo) / (hi - lo)
    return out.reshape(*lead, *size)


def cam_to_box(cam: Tensor, cam_thr: float) -> List[int]:
    """Box of one normalised map (``get_bboxes`` of the original).

    Args:
        cam (Tensor | np.ndarray): (H, W) map in [0, 1].
        cam_thr (float): threshold as a fraction of the uint8 maximum.

    Returns:
        list[int]: ``[x1, y1, x2, y2]``, x along W, exclusive ends.
    """
    if isinstance(cam, Tensor):
        cam = cam.detach().cpu().float().numpy()
    cam = np.asarray(cam, dtype=np.float32)
    if cam.ndim != 2:
        raise ValueError(f'cam_to_box: expected an (H, W) map, got shape '
                         f'{cam.shape}')
    cam = np.nan_to_num(cam, nan=0.0)  # constant map: no contour
    u8 = (cam * 255.).astype(np.uint8)  # truncation, float32 product
    thr = int(cam_thr * int(u8.max()))
    _, kept = cv2.threshold(u8, thr, 255, cv2.THRESH_TOZERO)
    contours, _ = cv2.findContours(kept, cv2.RETR_TREE,
                                   cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return [0, 0, 1, 1]
    largest = max(contours, key=cv2.contourArea)  # first one on ties
    x, y, w, h = cv2.boundingRect(largest)
    return [int(x), int(y), int(x + w), int(y + h)]


def topk_cam_boxes(cams: Tensor, class_indices: Sequence[int],
                   size: Tuple[int, int],
                   cam_thr: float) -> Tuple[Tensor, Tensor]:
    """Boxes of the given classes of one image (``get_topk_boxes``).

    Args:
        cams (Tensor): raw CAMs of one image, (C, h, w).
        class_indices (Sequence[int]): classes, e.g. the top-5 predictions
            in order.
        size (tuple[int, int]): crop size (H, W) the boxes refer to.
        cam_thr (float): box threshold (0.1 CUB, 0.12 ILSVRC in TS-CAM).

    Returns:
        tuple: boxes (K, 5) int64 rows ``[class, x1, y1, x2, y2]`` and the
        normalised maps (K, H, W).
    """
    idx = torch.as_tensor(list(class_indices), dtype=torch.long)
    maps = resize_normalize_cam(cams[idx.to(cams.device)], size)
    boxes = [[int(c)] + cam_to_box(m, cam_thr) for c, m in zip(idx, maps)]
    return torch.tensor(boxes, dtype=torch.long).reshape(-1, 5), maps


def box_iou_inclusive(box: Sequence[float], gt: Sequence[float]) -> float:
    """IoU with the original's +1 (inclusive pixel) convention
    (``cal_iou``), boxes ``[x1, y1, x2, y2]``."""
    iw = min(box[2], gt[2]) - max(box[0], gt[0]) + 1
    ih = min(box[3], gt[3]) - max(box[1], gt[1]) + 1
    inter = max(iw, 0.) * max(ih, 0.)
    area = ((box[2] - box[0] + 1) * (box[3] - box[1] + 1) +
            (gt[2] - gt[0] + 1) * (gt[3] - gt[1] + 1) - inter)
    return float(inter / area)


__all__ = [
    'resize_normalize_cam', 'cam_to_box', 'topk_cam_boxes',
    'box_iou_inclusive'
]
