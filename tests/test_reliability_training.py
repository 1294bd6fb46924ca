"""Training that survives a SIGKILL, is deterministic, stops on a NaN loss
and explains a misspelt ``type=``; crash-safe checkpoint files."""
import json
import os
import signal
import zipfile

import pytest
import torch
from mmengine.config import Config

from reliability_utils import (make_tiny_dataset, ok, run_tool,
                               train_losses, write_tiny_config)
from wsss_zoo.utils.launch import (explain_unknown_type,
                                   is_complete_checkpoint, resolve_resume)

TRAIN = 'tools/train.py'


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp('train')
    data = make_tiny_dataset(root / 'synth', num_train=12, num_val=2)
    config = write_tiny_config(root / 'tiny.py', data)
    kill = write_tiny_config(
        root / 'kill.py', data,
        "custom_hooks = [dict(type='FiniteLossHook'), "
        "dict(type='KillJobHook', at_iter=5)]\n")
    ref = root / 'uninterrupted'
    ok(run_tool([TRAIN, config, '--work-dir', ref]))
    return dict(root=root, config=config, kill=kill, ref=ref,
                ref_losses=train_losses(ref))


def _scalars(run_dir):
    """{iteration: loss} of one run folder (``<work_dir>/<timestamp>``)."""
    out = {}
    for line in (run_dir / 'vis_data' / 'scalars.json').read_text() \
            .splitlines():
        record = json.loads(line)
        if 'loss' in record:
            out[record['step']] = record['loss']
    return out


@pytest.mark.slow
def test_resume_after_sigkill_finishes_like_an_uninterrupted_run(setup):
    work = setup['root'] / 'killed'
    proc = run_tool([TRAIN, setup['kill'], '--work-dir', work])
    assert proc.returncode == -signal.SIGKILL
    assert sorted(p.name for p in work.glob('iter_*.pth')) == [
        'iter_2.pth', 'iter_4.pth']
    proc = ok(run_tool([TRAIN, setup['config'], '--work-dir', work,
                        '--resume']))
    log = proc.stdout + proc.stderr
    assert 'resumed epoch: 0, iter: 4' in log
    assert 'Iter(train) [5/8]' in log and 'Iter(train) [1/8]' not in log
    assert (work / 'iter_8.pth').is_file()
    # the resumed run (checkpoint at 4, data order advanced) repeats the
    # uninterrupted run's losses of iterations 5..8
    runs = sorted(p for p in work.iterdir() if p.is_dir())
    resumed = _scalars(runs[-1])
    assert sorted(resumed) == [5, 6, 7, 8]
    for step, loss in resumed.items():
        assert loss == pytest.approx(setup['ref_losses'][step], rel=1e-6)


@pytest.mark.slow
def test_two_training_runs_give_the_same_losses(setup):
    """seed 0, deterministic=True (randomness of the tiny config)."""
    work = setup['root'] / 'again'
    ok(run_tool([TRAIN, setup['config'], '--work-dir', work]))
    losses = train_losses(work)
    assert sorted(losses) == list(range(1, 9))
    assert losses == setup['ref_losses']  # bit-identical
    assert len(set(losses.values())) > 1  # the loss does move


@pytest.mark.slow
def test_nan_loss_stops_training_naming_the_iteration(setup):
    work = setup['root'] / 'nan'
    # std 0 in the data preprocessor: inf pixels, NaN loss at iteration 1
    proc = run_tool([TRAIN, setup['config'], '--work-dir', work,
                     '--cfg-options', 'model.data_preprocessor.std=[0,0,0]'])
    assert proc.returncode != 0
    assert 'FloatingPointError: non-finite training loss at iteration 1 ' \
        in proc.stderr
    assert 'loss=nan' in proc.stderr
    assert not list(work.glob('iter_*.pth'))  # nothing broken was saved


@pytest.mark.slow
def test_misspelt_type_lists_close_registered_names(setup):
    proc = run_tool([TRAIN, setup['config'], '--work-dir',
                     setup['root'] / 'typo', '--cfg-options',
                     'model.backbone.type=MCTFormerV1'])
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert "UnknownTypeError: unknown model type 'MCTFormerV1'" in last
    assert "did you mean 'MCTformerV1'" in last


# ----------------------------------------------------------------------------
# fast tests of the pieces

def test_finite_loss_hook_unit():
    from wsss_zoo.engine.hooks import FiniteLossHook

    class Runner:
        iter, epoch, hooks = 16, 0, []

    hook = FiniteLossHook()
    hook.after_train_iter(Runner(), 16, outputs=dict(
        loss=torch.tensor(0.5), loss_cls=torch.tensor(0.5), acc=float('nan')))
    with pytest.raises(FloatingPointError,
                       match=r'iteration 17 .*loss_cls=inf'):
        hook.after_train_iter(Runner(), 16, outputs=dict(
            loss=torch.tensor(1.0), loss_cls=torch.tensor(float('inf'))))


def test_default_runtime_registers_the_finite_loss_hook():
    from golden_utils import REPO_ROOT
    cfg = Config.fromfile(
        os.path.join(REPO_ROOT, 'configs', 'mctformer',
                     'mctformer-v1_vit-t8_1xb16-2k_synthshapes-96x96.py'))
    assert dict(type='FiniteLossHook') in cfg.custom_hooks


def test_unknown_type_messages_for_other_registries():
    msg = explain_unknown_type(
        'LoadImageFromFlie is not in the mmseg::transform registry. Please')
    assert "did you mean 'LoadImageFromFile'" in msg
    msg = explain_unknown_type(
        "class `CAMSegmentor` in x.py: 'MCTHaed is not in the mmseg::model "
        "registry.'")
    assert "'MCTHead'" in msg and 'inside CAMSegmentor' in msg
    assert explain_unknown_type('some other KeyError') is None


def _save(path, n=1):
    torch.save({'state_dict': {'w': torch.ones(n)}}, path)


def test_resume_falls_back_to_newest_complete_checkpoint(tmp_path):
    _save(tmp_path / 'iter_2.pth')
    _save(tmp_path / 'iter_4.pth', 1000)
    data = (tmp_path / 'iter_4.pth').read_bytes()
    (tmp_path / 'iter_6.pth').write_bytes(data[:len(data) // 2])  # cut off
    (tmp_path / 'last_checkpoint').write_text(str(tmp_path / 'iter_6.pth'))
    assert is_complete_checkpoint(str(tmp_path / 'iter_4.pth'))
    assert not is_complete_checkpoint(str(tmp_path / 'iter_6.pth'))
    cfg = Config(dict(resume=True, load_from=None, work_dir=str(tmp_path)))
    assert resolve_resume(cfg) == str(tmp_path / 'iter_4.pth')
    assert cfg.load_from == str(tmp_path / 'iter_4.pth')
    # a valid pointer is left to mmengine
    (tmp_path / 'last_checkpoint').write_text(str(tmp_path / 'iter_2.pth'))
    cfg = Config(dict(resume=True, load_from=None, work_dir=str(tmp_path)))
    assert resolve_resume(cfg) is None and cfg.load_from is None
    # an empty pointer (killed while writing it)
    (tmp_path / 'last_checkpoint').write_text('')
    assert resolve_resume(Config(dict(resume=True, load_from=None,
                                      work_dir=str(tmp_path)))) == str(
                                          tmp_path / 'iter_4.pth')
    # nothing usable: start from 0, the broken pointer is set aside
    for p in tmp_path.glob('iter_*.pth'):
        p.unlink()
    (tmp_path / 'last_checkpoint').write_text(str(tmp_path / 'iter_6.pth'))
    assert resolve_resume(Config(dict(resume=True, load_from=None,
                                      work_dir=str(tmp_path)))) is None
    assert not (tmp_path / 'last_checkpoint').exists()


def _killed_child(fn):
    """Run ``fn`` in a forked child that SIGKILLs itself inside it."""
    pid = os.fork()
    if pid == 0:  # child
        try:
            fn()
        finally:
            os._exit(3)  # only reached if fn did not kill the process
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


def test_killed_atomic_write_leaves_no_partial_file(tmp_path):
    from wsss_zoo.compat import atomic_write
    target = tmp_path / 'mask.png'

    def write_half_and_die(tmp):
        with open(tmp, 'wb') as f:
            f.write(b'\x89PNG half of it')
            f.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    _killed_child(lambda: atomic_write(str(target), write_half_and_die))
    assert not target.exists()
    assert len(list(tmp_path.glob('.tmp_*.png'))) == 1  # cleaned up later
    # an existing file survives a killed rewrite untouched
    target.write_bytes(b'old complete file')
    _killed_child(lambda: atomic_write(str(target), write_half_and_die))
    assert target.read_bytes() == b'old complete file'


def test_checkpoint_saving_is_atomic(tmp_path, monkeypatch):
    """mmengine's save_checkpoint -> LocalBackend.put goes through
    atomic_write: killed after the bytes are written but before the rename,
    no iter_N.pth exists; a normal save gives a complete file."""
    from mmengine.runner.checkpoint import save_checkpoint
    target = tmp_path / 'iter_8.pth'

    def save_and_die_before_rename():
        monkeypatch.setattr(os, 'replace', lambda *a: os.kill(
            os.getpid(), signal.SIGKILL))
        save_checkpoint({'state_dict': {'w': torch.ones(100)}}, str(target))

    _killed_child(save_and_die_before_rename)
    assert not target.exists()
    save_checkpoint({'state_dict': {'w': torch.ones(100)}}, str(target))
    assert zipfile.is_zipfile(target)
    assert oct(target.stat().st_mode & 0o777) != oct(0o600)  # not mkstemp's
