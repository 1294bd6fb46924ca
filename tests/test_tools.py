"""End-to-end runs of tools/train.py, tools/test.py and the dist launchers.

Each test trains the tiny synthetic DEPICT config for a few iterations in a
subprocess, exactly as a user would run the tools.
"""
import json
import os
import subprocess
import sys

import pytest

from golden_utils import REPO_ROOT

CONFIG = 'configs/depict/depict-sa_vit-t8_1xb8-2k_synthshapes-96x96.py'
pytestmark = pytest.mark.slow


@pytest.fixture(scope='module')
def synth_root(tmp_path_factory):
    from wsss_zoo.datasets.synthetic import make_synthshapes
    root = tmp_path_factory.mktemp('synth') / 'synthshapes'
    make_synthshapes(str(root), num_train=12, num_val=4, seed=0)
    return root


def _opts(root, max_iters=4, extra=()):
    opts = [
        f'train_dataloader.dataset.data_root={root}',
        f'val_dataloader.dataset.data_root={root}',
        f'test_dataloader.dataset.data_root={root}',
        'train_dataloader.batch_size=2', 'train_dataloader.num_workers=0',
        'train_dataloader.persistent_workers=False',
        'val_dataloader.num_workers=0',
        'val_dataloader.persistent_workers=False',
        'test_dataloader.num_workers=0',
        'test_dataloader.persistent_workers=False',
        f'train_cfg.max_iters={max_iters}',
        f'train_cfg.val_interval={max_iters}',
        'default_hooks.checkpoint.interval=2',
        'default_hooks.logger.interval=1',
    ]
    return ['--cfg-options'] + opts + list(extra)


def _run(args, timeout=600, launcher=None):
    env = dict(os.environ, PYTHONUNBUFFERED='1', OMP_NUM_THREADS='1')
    cmd = launcher or [sys.executable]
    proc = subprocess.run(cmd + args, cwd=REPO_ROOT, env=env, text=True,
                          capture_output=True, timeout=timeout)
    return proc


def _ok(proc):
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def test_train_test_and_resume(synth_root, tmp_path):
    work = tmp_path / 'work'
    _ok(_run(['tools/train.py', CONFIG, '--work-dir', str(work)] +
             _opts(synth_root, max_iters=4)))
    assert (work / 'iter_4.pth').is_file()
    # resume continues from iter 4 (weights_only=True checkpoint loading)
    proc = _ok(_run(['tools/train.py', CONFIG, '--work-dir', str(work),
                     '--resume'] + _opts(synth_root, max_iters=6)))
    log = proc.stdout + proc.stderr
    assert 'resumed epoch: 0, iter: 4' in log, log[-3000:]
    assert 'Iter(train) [5/6]' in log and 'Iter(train) [1/6]' not in log
    assert (work / 'iter_6.pth').is_file()
    # tools/test.py evaluates the checkpoint and writes masks with --out
    out = tmp_path / 'masks'
    _ok(_run(['tools/test.py', CONFIG, str(work / 'iter_6.pth'),
              '--work-dir', str(tmp_path / 'test'), '--out', str(out)] +
             _opts(synth_root)))
    metrics = json.loads((tmp_path / 'test' / 'test_metrics.json').read_text())
    assert 0.0 <= metrics['mIoU'] <= 100.0
    assert len(list(out.glob('*.png'))) == 4


def test_two_process_cpu_training_and_testing(synth_root, tmp_path):
    """`--launcher pytorch` with 2 processes on CPU (gloo) trains and tests."""
    work = tmp_path / 'dist'
    torchrun = [sys.executable, '-m', 'torch.distributed.run',
                '--nproc_per_node=2', '--master_port=29531']
    proc = _ok(_run(['tools/train.py', CONFIG, '--work-dir', str(work),
                     '--launcher', 'pytorch'] +
                    _opts(synth_root, max_iters=2), launcher=torchrun))
    log = proc.stdout + proc.stderr
    assert 'Distributed launcher: pytorch' in log or 'world_size: 2' in log
    assert (work / 'iter_2.pth').is_file()
    torchrun[-1] = '--master_port=29532'
    _ok(_run(['tools/test.py', CONFIG, str(work / 'iter_2.pth'),
              '--work-dir', str(tmp_path / 'dtest'), '--launcher',
              'pytorch'] + _opts(synth_root), launcher=torchrun))
    metrics = json.loads(
        (tmp_path / 'dtest' / 'test_metrics.json').read_text())
    assert 'mIoU' in metrics


def test_missing_dataset_names_path_and_fix(tmp_path):
    missing = tmp_path / 'nowhere'
    proc = _run(['tools/train.py', CONFIG, '--work-dir',
                 str(tmp_path / 'w')] + _opts(missing))
    assert proc.returncode != 0
    assert 'FileNotFoundError' in proc.stderr
    assert str(missing) in proc.stderr
    assert 'tools/make_synthetic_dataset.py --out' in proc.stderr


def test_ade20k_config_missing_data_error(tmp_path):
    proc = _run(['tools/train.py', 'configs/depict_vit_ade20k.py',
                 '--work-dir', str(tmp_path / 'w'), '--cfg-options',
                 f'train_dataloader.dataset.data_root={tmp_path}/ade'])
    assert proc.returncode != 0
    assert f'{tmp_path}/ade' in proc.stderr
    assert 'ADEChallengeData2016' in proc.stderr
