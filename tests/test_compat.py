"""wsss_zoo.compat: mmcv-lite stand-ins and torch>=2.6 checkpoint loading."""
import os
import pickle
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from wsss_zoo import compat


def _run(code):
    return subprocess.run([sys.executable, '-c', code], capture_output=True,
                          text=True, timeout=300)


@pytest.mark.skipif(compat.has_compiled_mmcv_ops(),
                    reason='full mmcv installed: stand-in not used')
def test_mmseg_imports_fail_without_standin_and_work_with_it():
    plain = _run('import mmseg.models')
    assert plain.returncode != 0 and "mmcv._ext" in plain.stderr
    fixed = _run(
        'import wsss_zoo, mmseg.models\n'
        'from mmseg.utils import register_all_modules\n'
        'register_all_modules()\n'
        'from mmseg.registry import MODELS\n'
        'assert MODELS.get("DEPICTHead") is not None\n'
        'from mmseg.models.decode_heads import cc_head, psa_head\n'
        'assert cc_head.CrissCrossAttention is None\n'
        'assert psa_head.PSAMask is None\n'
        'print("ok")')
    assert fixed.returncode == 0, fixed.stderr
    assert 'ok' in fixed.stdout


@pytest.mark.skipif(compat.has_compiled_mmcv_ops(),
                    reason='full mmcv installed: stand-in not used')
def test_standin_names_and_errors():
    import mmcv.ops
    assert getattr(mmcv.ops, '__wsss_zoo_standin__', False)
    with pytest.raises(ModuleNotFoundError, match='compiled mmcv'):
        mmcv.ops.DeformConv2d
    with pytest.raises(RuntimeError, match='compiled mmcv'):
        mmcv.ops.sigmoid_focal_loss(torch.zeros(2, 3), torch.zeros(2))


def test_point_sample_matches_grid_sample_definition():
    torch.manual_seed(0)
    feat = torch.randn(2, 3, 7, 9)
    points = torch.rand(2, 5, 2)
    out = compat.point_sample(feat, points, align_corners=False)
    ref = F.grid_sample(feat, (2 * points - 1).unsqueeze(2),
                        align_corners=False).squeeze(3)
    assert out.shape == (2, 3, 5)
    assert torch.equal(out, ref)
    # kwargs are forwarded (nearest differs from bilinear)
    nearest = compat.point_sample(feat, points, mode='nearest')
    assert not torch.allclose(nearest, out)
    grid = torch.rand(2, 4, 6, 2)
    assert compat.point_sample(feat, grid).shape == (2, 3, 4, 6)


def test_mmengine_checkpoint_loads_with_weights_only(tmp_path):
    """A checkpoint with the message-hub objects mmengine stores."""
    import numpy as np
    from mmengine.logging.history_buffer import HistoryBuffer
    buf = HistoryBuffer()
    buf.update(np.float64(1.5))
    buf.update(2.0)
    ckpt = dict(meta=dict(epoch=1, seed=np.int64(3),
                          arr=np.arange(3, dtype=np.float32)),
                message_hub=dict(log_scalars={'train/loss': buf}),
                state_dict={'w': torch.ones(2)})
    path = tmp_path / 'ckpt.pth'
    torch.save(ckpt, path)
    loaded = torch.load(path, weights_only=True)
    assert loaded['message_hub']['log_scalars']['train/loss'].mean() == 1.75
    assert loaded['meta']['seed'] == 3


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}', ))


def test_code_running_checkpoint_is_refused(tmp_path):
    marker = tmp_path / 'pwned'
    path = tmp_path / 'evil.pth'
    with open(path, 'wb') as f:
        pickle.dump({'state_dict': _Evil(marker)}, f)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)
    from mmengine.runner.checkpoint import _load_checkpoint
    with pytest.raises(pickle.UnpicklingError):
        _load_checkpoint(str(path), map_location='cpu')
    assert not marker.exists()
