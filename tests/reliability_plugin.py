"""Test-only hooks for the reliability tests (imported by the subprocess
configs through ``custom_imports``; never part of the package)."""
import os
import signal

from mmengine.dist import get_dist_info
from mmengine.hooks import Hook

from mmseg.registry import HOOKS


def _kill_job():
    """SIGKILL the whole process group: torchrun and every rank."""
    os.killpg(os.getpgrp(), signal.SIGKILL)


@HOOKS.register_module()
class KillJobHook(Hook):
    """SIGKILL the job (rank ``rank``) after training / test iteration
    ``at_iter`` (1-based), like a node failure or a pre-empted job."""

    priority = 'LOWEST'

    def __init__(self, at_iter: int, phase: str = 'train', rank: int = 0):
        self.at_iter = at_iter
        self.phase = phase
        self.rank = rank

    def _maybe_kill(self, index: int) -> None:
        if get_dist_info()[0] == self.rank and index + 1 == self.at_iter:
            _kill_job()

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None):
        if self.phase == 'train':
            self._maybe_kill(runner.iter)

    def after_test_iter(self, runner, batch_idx, data_batch=None,
                        outputs=None):
        if self.phase == 'test':
            self._maybe_kill(batch_idx)
