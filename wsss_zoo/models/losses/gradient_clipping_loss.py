"""WeakTr gradient-clipping cross-entropy (stage 2, online retraining).

Paper: L. Zhu et al., "WeakTr: Exploring Plain Vision Transformer for
Weakly-supervised Semantic Segmentation", arXiv 2304.01184, eqs. 12-13.
Original code: github.com/hustvl/WeakTr (commit 3457ad3),
``OnlineRetraining/segm/model/decoder.py::GradientClipping`` called from
``segm/engine.py::train_one_epoch`` with ``CrossEntropyLoss(ignore_index=255,
reduction='none')`` and ``segm/data/utils.py::weight_reduce_loss(...,
reduction='mean')``. Written fresh for wsss_zoo; parity-tested against
fixtures produced by the official code (``tests/test_weaktr_gcd_parity.py``).

Not to be confused with gradient-norm clipping of the optimiser
(``optim_wrapper.clip_grad``): here pixels whose loss is above a local
threshold are cut out of the gradient, as presumed pseudo-label noise.

Per batch (no state is carried between iterations, as in the original):

1. ``ce`` = per-pixel CE (B, H, W), ignored pixels give 0;
2. ``mu`` = mean of ``ce`` over ALL B*H*W pixels (ignored ones included);
3. if ``mu > start_value``: the loss is ``mean(ce)`` (clipping not started);
4. else ``tau`` = max(window means of the batch-averaged ``ce`` map, ``mu``),
   one value per ``window_size`` x ``window_size`` window, shared by every
   image of the batch, repeated to pixels (``T``, (H, W));
5. loss = mean(min(ce, T)) over all B*H*W pixels: pixels with ce > T get
   zero gradient.
"""
from typing import NamedTuple, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from mmseg.registry import MODELS


class ClipResult(NamedTuple):
    """Outputs of :func:`gradient_clip_loss_map`.

    ``local_mean``, ``threshold_local``, ``threshold_map`` and ``clip_mask``
    are None when clipping is not active (``mean_loss > start_value``).
    """
    loss_map: Tensor  # (B, H, W) min(ce, T), or ce when not active
    mean_loss: Tensor  # () mu, detached
    active: bool  # mu <= start_value
    local_mean: Optional[Tensor] = None  # (H / ws, W / ws)
    threshold_local: Optional[Tensor] = None  # (H / ws, W / ws) max(local, mu)
    threshold_map: Optional[Tensor] = None  # (H, W)
    clip_mask: Optional[Tensor] = None  # (B, H, W) bool: ce > T (no gradient)


def gradient_clip_loss_map(ce_map: Tensor, start_value: float,
                           window_size: int) -> ClipResult:
    """Clip a per-pixel loss map with WeakTr's local/global thresholds.

    Args:
        ce_map (Tensor): per-pixel loss, (B, H, W), 0 at ignored pixels.
        start_value (float): clipping is active only when the batch mean
            loss is <= this value (the original ``--start-value``).
        window_size (int): side of the square threshold windows in pixels
            (the original ``--patch-size``); must divide H and W.

    Returns:
        ClipResult: the clipped loss map (B, H, W) and the statistics.

    Raises:
        ValueError: H or W is not a multiple of ``window_size``.
    """
    B, H, W = ce_map.shape
    if H % window_size or W % window_size:
        raise ValueError(
            f'GradientClippingLoss: the label size {(H, W)} is not a '
            f'multiple of window_size={window_size} (the original code '
            'fails with a shape error there). Use a crop size (data '
            'preprocessor `size`) that is a multiple of window_size, or '
            'change window_size.')
    detached = ce_map.detach()
    mean_loss = detached.mean()
    if mean_loss > start_value:
        return ClipResult(loss_map=ce_map, mean_loss=mean_loss, active=False)

    batch_mean = detached.mean(dim=0, keepdim=True)  # (1, H, W)
    # the original passes padding=H % window_size, which is 0 here
    local_mean = F.avg_pool2d(
        batch_mean.unsqueeze(1),
        kernel_size=window_size,
        stride=window_size,
        count_include_pad=False)[0, 0]  # (H / ws, W / ws)
    threshold_local = torch.maximum(local_mean, mean_loss)
    threshold_map = threshold_local.repeat_interleave(
        window_size, dim=0).repeat_interleave(
            window_size, dim=1)  # (H, W)
    # original arithmetic: clamp(ce - T, max=0) + T; clamp's backward gives
    # zero gradient exactly where ce - T > 0
    loss_map = torch.clamp(ce_map - threshold_map, max=0) + threshold_map
    return ClipResult(
        loss_map=loss_map,
        mean_loss=mean_loss,
        active=True,
        local_mean=local_mean,
        threshold_local=threshold_local,
        threshold_map=threshold_map,
        clip_mask=detached > threshold_map)


@MODELS.register_module()
class GradientClippingLoss(nn.Module):
    """WeakTr's cross-entropy with gradient clipping, as an mmseg loss.

    Use it as ``loss_decode`` of a decode head (``WeakTrGCDHead`` does by
    default). It receives logits already at the label size, (B, C, H, W),
    and labels (B, H, W) (``BaseDecodeHead.loss_by_feat``), and returns the
    scalar ``loss_weight * mean(loss_map)``; the mean runs over all B*H*W
    pixels, ignored ones included (as the original ``weight_reduce_loss``).

    Stateless: the thresholds are recomputed from every batch, and the
    ``mu <= start_value`` switch is tested anew on every batch (it is not a
    latch). Under DDP every process clips with the statistics of its own
    batch, as the original (its ``GradientClipping`` module sits outside DDP
    and nothing is all-reduced). ``last_stats`` keeps the detached
    statistics of the last call for logging; it is not state (not in
    ``state_dict``, never read back).

    Args:
        start_value (float): clipping starts once the batch mean CE is
            <= start_value (original ``--start-value``, 1.2 in the docs).
            Default: 1.2.
        window_size (int): threshold window side in pixels (original
            ``--patch-size``, 120 for 480 crops = 4x4 windows); must divide
            the label height and width. Default: 120.
        ignore_index (int): label to ignore when the caller passes none.
            Default: 255.
        loss_weight (float): weight of the loss. Default: 1.0.
        loss_name (str): name in the loss dict; must start with ``loss_``.
            Default: 'loss_gc'.
    """

    def __init__(self,
                 start_value: float = 1.2,
                 window_size: int = 120,
                 ignore_index: int = 255,
                 loss_weight: float = 1.0,
                 loss_name: str = 'loss_gc'):
        super().__init__()
        if isinstance(start_value, bool) or not isinstance(
                start_value, (int, float)):
            raise TypeError('GradientClippingLoss: start_value must be a '
                            f'number (e.g. 1.2), got {start_value!r}')
        if isinstance(window_size, bool) or not isinstance(
                window_size, int) or window_size < 1:
            raise ValueError(
                'GradientClippingLoss: window_size must be a positive int '
                f'(pixels; 120 for 480x480 crops), got {window_size!r}')
        if not loss_name.startswith('loss_'):
            raise ValueError(
                f"GradientClippingLoss: loss_name must start with 'loss_' "
                f'(mmseg only back-propagates such keys), got {loss_name!r}')
        self.start_value = float(start_value)
        self.window_size = window_size
        self.ignore_index = ignore_index
        self.loss_weight = loss_weight
        self._loss_name = loss_name
        self.last_stats: dict = {}

    def forward(self,
                seg_logits: Tensor,
                seg_label: Tensor,
                weight: Optional[Tensor] = None,
                ignore_index: Optional[int] = None,
                **kwargs) -> Tensor:
        """Clipped mean CE.

        Args:
            seg_logits (Tensor): logits at label size, (B, C, H, W).
            seg_label (Tensor): labels, (B, H, W), ``ignore_index`` ignored.
            weight (Tensor, optional): per-pixel weight (B, H, W) applied to
                the clipped map before the mean (a pixel sampler's weight;
                the original has none). Default: None.
            ignore_index (int, optional): overrides ``self.ignore_index``.

        Returns:
            Tensor: scalar loss.
        """
        if ignore_index is None:
            ignore_index = self.ignore_index
        ce_map = F.cross_entropy(
            seg_logits,
            seg_label.long(),
            ignore_index=ignore_index,
            reduction='none')  # (B, H, W), 0 where ignored
        result = gradient_clip_loss_map(ce_map, self.start_value,
                                        self.window_size)
        loss_map = result.loss_map
        if weight is not None:
            loss_map = loss_map * weight
        clipped = ce_map.new_zeros(())
        if result.active:  # fraction of the labelled pixels cut out
            valid = seg_label != ignore_index
            clipped = (result.clip_mask & valid).sum() / valid.sum().clamp(
                min=1)
        self.last_stats = dict(
            gc_mean_ce=result.mean_loss,
            gc_active=ce_map.new_tensor(float(result.active)),
            gc_clipped_frac=clipped.float())
        return self.loss_weight * loss_map.mean()

    @property
    def loss_name(self) -> str:
        """Key of this loss in the loss dict (mmseg convention)."""
        return self._loss_name
