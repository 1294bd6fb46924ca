"""Stop training at the first NaN / Inf loss, saying where."""
import math
from typing import Optional

import torch
from mmengine.dist import all_reduce, get_dist_info
from mmengine.hooks import CheckpointHook, Hook

from mmseg.registry import HOOKS


def _as_float(value) -> Optional[float]:
    if isinstance(value, torch.Tensor):
        return float(value.detach().float().mean()) if value.numel() else None
    if isinstance(value, (int, float)):
        return float(value)
    return None


@HOOKS.register_module()
class FiniteLossHook(Hook):
    """Raise ``FloatingPointError`` as soon as a training loss is NaN or Inf.

    mmengine keeps training on a NaN loss (the weights become NaN and every
    later checkpoint is useless); its ``CheckInvalidLossHook`` only looks every
    50 iterations and does not say where. This hook checks every loss term
    of every iteration (the values the logger reads anyway), and before the
    checkpoint and logger hooks run, so no checkpoint with the broken
    weights is written. In distributed training the verdict is shared
    (one all-reduce of a flag), so every rank stops at the same iteration.

    Registered for every wsss_zoo config in ``configs/_base_/
    default_runtime.py`` (``custom_hooks``).

    Args:
        sync (bool): share the verdict across ranks. Default: True.
    """

    priority = 'VERY_HIGH'  # before LoggerHook / CheckpointHook

    def __init__(self, sync: bool = True):
        self.sync = sync

    @staticmethod
    def _last_checkpoint(runner) -> Optional[str]:
        for hook in runner.hooks:
            if isinstance(hook, CheckpointHook):
                return getattr(hook, 'last_ckpt', None)
        return None

    def after_train_iter(self,
                         runner,
                         batch_idx: int,
                         data_batch=None,
                         outputs: Optional[dict] = None) -> None:
        losses = {}
        for key, value in (outputs or {}).items():
            if 'loss' in key:
                number = _as_float(value)
                if number is not None:
                    losses[key] = number
        bad = {k: v for k, v in losses.items() if not math.isfinite(v)}
        if self.sync and get_dist_info()[1] > 1:
            flag = torch.tensor([float(bool(bad))])
            all_reduce(flag, op='max')
            any_bad = bool(flag.item() > 0)
        else:
            any_bad = bool(bad)
        if not any_bad:
            return
        values = ', '.join(f'{k}={v}' for k, v in (bad or losses).items())
        where = (f'this rank: {values}' if bad else
                 f'on another rank (this rank: {values})')
        last = self._last_checkpoint(runner)
        raise FloatingPointError(
            f'non-finite training loss at iteration {runner.iter + 1} '
            f'(epoch {runner.epoch + 1}, batch {batch_idx + 1}), {where}. '
            'Training stopped; the weights after this step are not saved '
            f'(last checkpoint: {last or "none"}). Usual causes: learning '
            'rate too high or no warm-up, exploding gradients (set '
            'optim_wrapper.clip_grad=dict(max_norm=...)), a broken input '
            '(NaN/Inf pixels, a data preprocessor std of 0), or fp16 '
            'overflow (--amp). Fix it and continue with tools/train.py '
            '--resume.')
