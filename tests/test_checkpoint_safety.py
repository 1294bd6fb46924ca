"""Checkpoints are data, never code: every loading route refuses a pickle
that would run code (a marker file is never created), also with
``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``; converters refuse another model's
checkpoint listing the keys; a checkpoint of another class count stops
``tools/test.py`` with the mismatching keys."""
import glob
import json
import os
import pickle
import runpy
import sys
from pathlib import Path

import pytest
import torch

from reliability_utils import (REPO, make_tiny_dataset, ok, run_tool,
                               save_random_checkpoint, write_tiny_config)
from wsss_zoo.compat import UnsafeCheckpointError, load_checkpoint_file

CONVERTERS = sorted(glob.glob(str(REPO / 'tools' / 'model_converters' /
                                  '*.py')))


class _Touch:
    """Unpickling this runs ``os.system('touch MARKER')``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}', ))


def _resnet_state_dict():
    return {'conv1.weight': torch.zeros(8, 3, 3, 3),
            'bn1.weight': torch.ones(8), 'bn1.bias': torch.zeros(8),
            'layer1.0.conv1.weight': torch.zeros(8, 8, 3, 3),
            'fc.weight': torch.zeros(10, 8), 'fc.bias': torch.zeros(10)}


def make_evil_checkpoint(path: Path, marker: Path, state_dict=None) -> Path:
    """A real torch.save zip checkpoint whose meta runs code when loaded
    with plain pickle."""
    torch.save({'state_dict': state_dict or _resnet_state_dict(),
                'meta': {'note': _Touch(marker)}}, path)
    return path


@pytest.fixture
def evil(tmp_path, monkeypatch):
    # even with torch's escape hatch set, nothing may be unpickled unsafely
    monkeypatch.setenv('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', '1')
    marker = tmp_path / 'MARKER'
    path = make_evil_checkpoint(tmp_path / 'evil.pth', marker)
    # the payload is live: plain unpickling would create the marker
    assert not marker.exists()
    return path, marker


def test_the_payload_really_runs_code_without_weights_only(tmp_path):
    marker = tmp_path / 'MARKER'
    path = make_evil_checkpoint(tmp_path / 'evil.pth', marker)
    torch.load(path, weights_only=False)  # what an unsafe loader would do
    assert marker.exists()


def test_package_loaders_refuse_code(evil):
    from mmengine.runner import CheckpointLoader, load_checkpoint
    from mmengine.runner.checkpoint import _load_checkpoint

    from mmseg.registry import MODELS
    path, marker = evil
    with pytest.raises(UnsafeCheckpointError, match='posix.system|os.system'):
        load_checkpoint_file(path)
    with pytest.raises(pickle.UnpicklingError, match=str(path)):
        _load_checkpoint(str(path), map_location='cpu')
    with pytest.raises(pickle.UnpicklingError):
        CheckpointLoader.load_checkpoint(str(path))
    with pytest.raises(pickle.UnpicklingError):  # load_from / Pretrained
        load_checkpoint(torch.nn.Linear(2, 2), str(path))
    backbone = MODELS.build(dict(  # its own pretrained loader
        type='MCTformerV1', img_size=32, patch_size=8, embed_dims=32,
        num_layers=1, num_heads=2, num_classes=3, pretrained=str(path)))
    with pytest.raises(pickle.UnpicklingError):
        backbone.init_weights()
    assert not marker.exists()


@pytest.mark.parametrize('tool', CONVERTERS,
                         ids=[os.path.basename(c) for c in CONVERTERS])
def test_converter_refuses_code(tool, evil, tmp_path, monkeypatch, capsys):
    path, marker = evil
    dst = tmp_path / 'converted.pth'
    monkeypatch.setattr(sys, 'argv', [tool, str(path), str(dst)])
    with pytest.raises(BaseException) as info:
        runpy.run_path(tool, run_name='__main__')
    out = capsys.readouterr()
    message = f'{info.value}\n{out.out}\n{out.err}'
    assert not marker.exists()
    assert not dst.exists()
    assert 'system' in message, message  # names the refused call


@pytest.mark.parametrize('tool', CONVERTERS,
                         ids=[os.path.basename(c) for c in CONVERTERS])
def test_converter_refuses_another_models_checkpoint(tool, tmp_path,
                                                     monkeypatch, capsys):
    src = tmp_path / 'resnet.pth'
    torch.save({'state_dict': _resnet_state_dict()}, src)
    dst = tmp_path / 'converted.pth'
    monkeypatch.setattr(sys, 'argv', [tool, str(src), str(dst)])
    with pytest.raises(BaseException) as info:
        runpy.run_path(tool, run_name='__main__')
    out = capsys.readouterr()
    message = f'{info.value}\n{out.out}\n{out.err}'
    assert not dst.exists()
    assert 'missing' in message.lower(), message
    assert 'conv1.weight' in message, message  # the unexpected keys listed


def test_restricted_getattr_blocks_reaching_module_globals(tmp_path):
    """mmengine checkpoints need ``getattr(HistoryBuffer, 'min')``; the
    builtin getattr on the allow-list would let a pickle reach a function's
    ``__globals__`` and rewrite module variables."""
    import mmengine.logging.history_buffer as hb

    class Init:
        def __reduce__(self):
            return (getattr, (hb.HistoryBuffer, '__init__'))

    class Globals:
        def __reduce__(self):  # getattr(f, '__globals__') + SETITEMS
            return (getattr, (Init(), '__globals__'), None, None,
                    iter([('WSSS_TAMPERED', True)]))

    path = tmp_path / 'tamper.pth'
    with open(path, 'wb') as f:
        pickle.dump({'meta': Globals()}, f, protocol=2)
    with pytest.raises(UnsafeCheckpointError, match='__init__'):
        load_checkpoint_file(path)
    assert not hasattr(hb, 'WSSS_TAMPERED')
    # with the plain builtin allow-listed (as before), the attack works
    saved = torch.serialization.get_safe_globals()
    try:
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals(
            [g for g in saved if not isinstance(g, tuple) or
             g[1] != 'builtins.getattr'] + [getattr])
        with pytest.raises(RuntimeError, match='magic number'):
            torch.load(path, weights_only=True)  # unpickled, then rejected
        assert hb.WSSS_TAMPERED is True  # ... too late
    finally:
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals(saved)
        if hasattr(hb, 'WSSS_TAMPERED'):
            del hb.WSSS_TAMPERED


def test_mmengine_message_hub_checkpoint_still_loads(tmp_path):
    """What --resume needs (HistoryBuffer statistics methods included)."""
    import numpy as np
    from mmengine.logging import HistoryBuffer, MessageHub
    hub = MessageHub('wsss_safety_test')
    hub.update_scalar('train/loss', np.float32(0.5))
    hub.update_scalar('train/loss', 0.25)
    hub.update_info('iter', np.int64(3))
    path = tmp_path / 'ckpt.pth'
    torch.save(dict(meta=dict(seed=np.int64(0)), message_hub=hub.state_dict(),
                    state_dict={'w': torch.ones(2)}), path)
    loaded = load_checkpoint_file(path)
    buf = loaded['message_hub']['log_scalars']['train/loss']
    assert isinstance(buf, HistoryBuffer) and buf.mean() == 0.375
    assert buf.statistics('max') == 0.5


# ----------------------------------------------------------------------------
# the tools, each route once, in one subprocess

_DRIVER = r'''
import importlib.util, json, sys
results = {}
def call(key, tool, argv):
    spec = importlib.util.spec_from_file_location('tool_' + key, tool)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    try:
        module.main(argv)
        results[key] = 'ok'
    except BaseException as e:
        results[key] = f'{type(e).__name__}: {e}'
for key, tool, argv in json.loads(sys.argv[1]):
    call(key, tool, argv)
print('RESULTS=' + json.dumps(results))
'''


@pytest.fixture(scope='module')
def tool_routes(tmp_path_factory):
    root = tmp_path_factory.mktemp('routes')
    data = make_tiny_dataset(root / 'synth', num_train=4, num_val=2)
    config = write_tiny_config(root / 'tiny.py', data)
    marker = root / 'MARKER'
    good = save_random_checkpoint(config, root / 'good.pth')
    state = torch.load(good, weights_only=True)['state_dict']
    evil = make_evil_checkpoint(root / 'evil.pth', marker, state)
    # a checkpoint of the same model trained for 3 classes instead of 5
    config3 = write_tiny_config(
        root / 'three.py', data,
        "model['backbone']['num_classes'] = 3\n"
        "model['cam_head']['num_classes'] = 3\n")
    three = save_random_checkpoint(config3, root / 'three.pth')
    resume_dir = root / 'resume'
    resume_dir.mkdir()
    (resume_dir / 'iter_2.pth').write_bytes(evil.read_bytes())
    (resume_dir / 'last_checkpoint').write_text(str(resume_dir / 'iter_2.pth'))
    img = sorted((data / 'JPEGImages').glob('*.jpg'))[0]
    t = str(REPO / 'tools')
    routes = [
        ('resume', f'{t}/train.py', [str(config), '--work-dir',
                                     str(resume_dir), '--resume']),
        ('load_from', f'{t}/train.py', [
            str(config), '--work-dir', str(root / 'w_load'), '--cfg-options',
            f'load_from={evil}']),
        ('pretrained', f'{t}/train.py', [
            str(config), '--work-dir', str(root / 'w_pre'), '--cfg-options',
            f'model.backbone.pretrained={evil}']),
        ('test', f'{t}/test.py', [str(config), str(evil), '--work-dir',
                                  str(root / 'w_test')]),
        ('pseudo', f'{t}/make_pseudo_labels.py', [
            str(config), str(evil), '--out-dir', str(root / 'pl')]),
        ('visualize', f'{t}/visualize_cams.py', [
            str(config), str(evil), str(img), '--out-dir', str(root / 'v')]),
        ('test_three', f'{t}/test.py', [str(config), str(three),
                                        '--work-dir', str(root / 'w_3')]),
        ('test_good', f'{t}/test.py', [str(config), str(good),
                                       '--work-dir', str(root / 'w_ok')]),
    ]
    proc = run_tool(['-c', _DRIVER, json.dumps(routes)],
                    env=dict(TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD='1'))
    ok(proc)
    line = [ln for ln in proc.stdout.splitlines()
            if ln.startswith('RESULTS=')][-1]
    return dict(results=json.loads(line[len('RESULTS='):]), marker=marker,
                evil=evil, three=three)


@pytest.mark.slow
@pytest.mark.parametrize('route', ['resume', 'load_from', 'pretrained',
                                   'test', 'pseudo', 'visualize'])
def test_tool_refuses_code_running_checkpoint(tool_routes, route):
    result = tool_routes['results'][route]
    assert not tool_routes['marker'].exists()
    assert 'UnsafeCheckpointError' in result or (
        'UnpicklingError' in result and 'system' in result), result
    if route != 'pretrained':  # the backbone's own loader names no file
        assert 'evil.pth' in result or 'iter_2.pth' in result, result


@pytest.mark.slow
def test_test_tool_stops_on_checkpoint_of_other_class_count(tool_routes):
    result = tool_routes['results']['test_three']
    assert result.startswith('ValueError: checkpoint'), result
    assert 'three.pth' in result and 'size mismatch' in result
    assert 'num_classes' in result
    assert tool_routes['results']['test_good'] == 'ok'
