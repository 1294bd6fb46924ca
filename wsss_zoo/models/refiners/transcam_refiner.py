"""TransCAM attention refinement of the CNN-branch CAM.

liruiwen/TransCAM ``network/conformer.py::Net.forward(method, x)``: the
post-softmax attention of every transformer block is averaged over heads and
SUMMED over blocks, A = sum_l mean_heads(A_l), (B, 1 + P, 1 + P), not
renormalised; the CNN CAM M (B, C, P) is not ReLU'ed. Modes (``method``):

* ``transcam`` (the method): ``cam[c, i] = sum_j A[1 + i, 1 + j] M[c, j]``
  (row i = query patch);
* ``attnagg``: the same with A transposed;
* ``clsattn``: ``cam[c, i] = A[0, 1 + i] M[c, i]`` (class-token row);
* ``convcam``: M unchanged (no attention).

The original reshapes the patch axis to ``int(sqrt(P))`` squared, so it only
runs on square inputs (a non-square one raises, or is silently re-gridded
when P is a perfect square). Here the grid is the backbone's ``hw`` =
(H / 16, W / 16) in row-major order, which equals the original on squares and
is correct on any H x W.

:func:`transcam_normalize` is the per-class normalisation of
``infer_TransCAM.py`` (clamp at 0 before min / max, eps 1e-5).
"""
from typing import Iterable, List, Optional

import torch
from mmengine.model import BaseModule
from torch import Tensor

from mmseg.registry import MODELS
from ..utils.attention import normalize_layer_indices

_MODES = ('transcam', 'attnagg', 'clsattn', 'convcam')


@MODELS.register_module()
class TransCAMRefiner(BaseModule):
    """Refine CNN CAMs with head-averaged attention summed over blocks.

    Args:
        mode (str): 'transcam' (default, the method), 'attnagg', 'clsattn'
            or 'convcam' (identity), the original ``method``.
        layers (Iterable[int], optional): blocks whose attention is summed
            (negative indices allowed). None: all, as the original.
            Default: None.
        init_cfg (dict, optional): unused (no parameters). Default: None.
    """

    # reads attention maps only through their mean over heads
    attn_head_mean_only = True

    def __init__(self,
                 mode: str = 'transcam',
                 layers: Optional[Iterable[int]] = None,
                 init_cfg: Optional[dict] = None):
        super().__init__(init_cfg=init_cfg)
        if mode not in _MODES:
            raise ValueError(f'TransCAMRefiner: mode must be one of {_MODES}'
                             f', got {mode!r}')
        self.mode = mode
        self.layers = None if layers is None else list(layers)

    def attn_layers(self, num_layers: int) -> List[int]:
        """Blocks whose attention maps :meth:`forward` needs."""
        if self.mode == 'convcam':
            return []
        if self.layers is None:
            return list(range(num_layers))
        return normalize_layer_indices(self.layers, num_layers)

    def attention_sum(self, feats: dict) -> Tensor:
        """sum_l mean_heads(A_l) over :meth:`attn_layers`, (B, N, N)."""
        attn = feats['attn']
        num_layers = feats.get('num_layers')
        layers = (self.attn_layers(num_layers)
                  if num_layers is not None else sorted(attn))
        missing = [i for i in layers if i not in attn]
        if missing or not layers:
            raise KeyError(
                f'TransCAMRefiner needs the attention maps of blocks '
                f'{layers}, but only {sorted(attn)} were captured: pass '
                'capture_layers=refiner.attn_layers(num_layers) to the '
                'backbone')
        # (L, B, heads, N, N) -> mean over heads -> sum over blocks
        return torch.stack([attn[i] for i in layers]).mean(dim=2).sum(dim=0)

    def forward(self, cams: Tensor, feats: dict) -> Tensor:
        """Refine CNN CAMs.

        Args:
            cams (Tensor): CNN CAMs, (B, C, h, w), any number of channels.
            feats (dict): backbone features: ``attn`` {layer: (B, heads, N,
                N)} with N = (class token) + h * w, ``hw``, ``num_layers``.

        Returns:
            Tensor: (B, C, h, w).
        """
        if self.mode == 'convcam':
            return cams
        B, C, h, w = cams.shape
        if 'hw' in feats and tuple(feats['hw']) != (h, w):
            raise ValueError(f'TransCAMRefiner: CAM grid {(h, w)} differs '
                             f"from the token grid {tuple(feats['hw'])}")
        A = self.attention_sum(feats)  # (B, N, N)
        prefix = A.shape[-1] - h * w  # the class token
        if prefix < 1:
            raise ValueError(
                f'TransCAMRefiner: attention over {A.shape[-1]} tokens does '
                f'not fit a class token + {h}x{w} patches')
        flat = cams.reshape(B, C, h * w)
        if self.mode == 'clsattn':
            refined = A[:, 0, prefix:][:, None] * flat
        else:
            A_pp = A[:, prefix:, prefix:]  # (B, P query, P key)
            if self.mode == 'attnagg':
                A_pp = A_pp.transpose(1, 2)
            refined = torch.einsum('bij,bcj->bci', A_pp, flat)
        return refined.reshape(B, C, h, w)


def transcam_normalize(sum_cam: Tensor, eps: float = 1e-5) -> Tensor:
    """Per-class normalisation of ``infer_TransCAM.py``.

    Negatives are set to 0; per class ``mx`` / ``mn`` = max / min; values
    below ``mn + eps`` are set to 0; then ``(S - mn - eps) / (mx - mn +
    eps)``. As in the original, the zeroed pixels map to ``-(mn + eps) /
    (mx - mn + eps)``: about 0 when ``mn`` is 0, negative when a class CAM
    is positive everywhere, and -1 for a class whose CAM is <= 0 everywhere.

    Args:
        sum_cam (Tensor): summed CAMs, (..., C, H, W).
        eps (float): Default: 1e-5 (the original).

    Returns:
        Tensor: same shape.
    """
    cam = sum_cam.clamp_min(0)
    mx = cam.amax(dim=(-2, -1), keepdim=True)
    mn = cam.amin(dim=(-2, -1), keepdim=True)
    cam = torch.where(cam < mn + eps, torch.zeros_like(cam), cam)
    return (cam - mn - eps) / (mx - mn + eps)
