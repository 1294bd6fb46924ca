"""Positional-embedding resizing rules of the original WSSS transformers.

Two rules exist and they are NOT the same maths:

* MCTformer V1 / V2 (and WeakTr, DINO): ``F.interpolate(bicubic,
  scale_factor=((h + 0.1) / n, (w + 0.1) / n))``. The output is h x w, but
  the source coordinates follow the given scale factor (n / (h + 0.1)), not
  the size ratio n / h, so it differs from a size-based resize by up to ~0.1
  of the embedding range. :func:`resize_pos_embed_dino` reproduces it and
  :func:`mct_patch_pos_embed` says when V1/V2 apply it (P != N or H != W).
* MCTformer+ (eval mode) uses ``scale_factor = (h / n, w / n)`` with no
  offset, which equals a size-based bicubic resize: timm's
  ``resample_abs_pos_embed`` (``antialias=False``) is used for it
  (:func:`mct_plus_patch_pos_embed`), and for the fine-tuning resize of a
  DeiT checkpoint (original ``main.py``: size-based bicubic).

All embeddings are (1, tokens, D); a stored patch grid is square (n x n).
"""
import math
from typing import Tuple

import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed
from torch import Tensor


def square_grid_side(num_patches: int) -> int:
    """Side n of a stored square n x n patch grid; ValueError otherwise."""
    side = int(math.sqrt(num_patches))
    if side * side != num_patches:
        raise ValueError(f'positional embedding has {num_patches} patch rows, '
                         'which is not a square grid')
    return side


def resize_pos_embed_dino(patch_pos: Tensor, grid_hw: Tuple[int, int],
                          offset: float = 0.1) -> Tensor:
    """MCTformer V1/V2 (DINO-style) bicubic resize with the ``+ offset`` rule.

    Args:
        patch_pos (Tensor): patch positional embeddings (no class rows),
            (1, n * n, D).
        grid_hw (tuple[int, int]): target patch grid (h, w).
        offset (float): added to h and w before forming the scale factor.
            Default: 0.1 (the original).

    Returns:
        Tensor: (1, h * w, D).
    """
    _, N, D = patch_pos.shape
    n = square_grid_side(N)
    h, w = grid_hw
    grid = patch_pos.reshape(1, n, n, D).permute(0, 3, 1, 2)
    out = F.interpolate(
        grid,
        scale_factor=((h + offset) / n, (w + offset) / n),
        mode='bicubic',
        align_corners=False)
    if tuple(out.shape[-2:]) != (h, w):
        raise ValueError(f'pos-embed resize gave {tuple(out.shape[-2:])}, '
                         f'expected {(h, w)} (offset {offset})')
    return out.permute(0, 2, 3, 1).reshape(1, h * w, D)


def mct_patch_pos_embed(patch_pos: Tensor, img_hw: Tuple[int, int],
                        grid_hw: Tuple[int, int]) -> Tensor:
    """Patch positional embeddings MCTformer V1/V2 add for one input.

    As stored only when the patch count equals the stored one AND the image
    is square (``H == W``, raw pixel sizes); otherwise
    :func:`resize_pos_embed_dino`, also at the stored grid when H != W (e.g.
    70 x 66 -> 4 x 4) and in training mode (``interpolate_pos_encoding`` of
    the original ``models.py``).

    Args:
        patch_pos (Tensor): stored patch rows, (1, N, D).
        img_hw (tuple[int, int]): input image (H, W) in pixels.
        grid_hw (tuple[int, int]): patch grid (h, w) of that input.

    Returns:
        Tensor: (1, h * w, D).
    """
    H, W = img_hw
    h, w = grid_hw
    if h * w == patch_pos.shape[1] and H == W:
        return patch_pos
    return resize_pos_embed_dino(patch_pos, grid_hw, offset=0.1)


def resize_pos_embed_bicubic(patch_pos: Tensor,
                             grid_hw: Tuple[int, int]) -> Tensor:
    """Size-based bicubic resize (align_corners False, no antialias).

    Thin wrapper over timm's ``resample_abs_pos_embed`` (exact identity when
    the size does not change). (1, n * n, D) -> (1, h * w, D).
    """
    n = square_grid_side(patch_pos.shape[1])
    return resample_abs_pos_embed(
        patch_pos,
        new_size=list(grid_hw),
        old_size=[n, n],
        num_prefix_tokens=0,
        interpolation='bicubic',
        antialias=False)


def mct_plus_patch_pos_embed(patch_pos: Tensor, grid_hw: Tuple[int, int],
                             training: bool) -> Tensor:
    """Patch positional embeddings MCTformer+ adds for one input.

    Training: as stored (the original requires the training size; other
    grids, which crash the original, are resized as in eval). Eval: bicubic
    with ``scale_factor = (h / n, w / n)`` and no offset, always (the
    original's shortcut compares ``P - C`` with N and is never taken), which
    equals a size-based resize and is the identity at the stored grid.

    Args:
        patch_pos (Tensor): ``pos_embed_pat``, (1, N, D).
        grid_hw (tuple[int, int]): patch grid (h, w) of the input.
        training (bool): module mode.

    Returns:
        Tensor: (1, h * w, D).
    """
    n = square_grid_side(patch_pos.shape[1])
    if training and tuple(grid_hw) == (n, n):
        return patch_pos
    return resize_pos_embed_bicubic(patch_pos, grid_hw)


def upsample_pos_embed_nearest(patch_pos: Tensor, factor: int) -> Tensor:
    """Replicate each patch embedding into a factor x factor block.

    MCTformer+ ``main.py`` builds ``pos_embed_pat`` (28 x 28) from DeiT's
    14 x 14 grid this way (factor 2). (1, n * n, D) -> (1, (f n)^2, D).
    """
    _, N, D = patch_pos.shape
    n = square_grid_side(N)
    grid = patch_pos.reshape(1, n, 1, n, 1, D)
    grid = grid.expand(1, n, factor, n, factor, D)
    return grid.reshape(1, n * factor * n * factor, D).contiguous()


__all__ = [
    'square_grid_side', 'resize_pos_embed_dino', 'mct_patch_pos_embed',
    'resize_pos_embed_bicubic', 'mct_plus_patch_pos_embed',
    'upsample_pos_embed_nearest'
]
