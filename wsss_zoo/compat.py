"""Compatibility fixes for running mmseg 1.2.2 on a 2026 stack.

Two things are patched, both only when needed and both idempotent:

1. **mmcv-lite.** mmsegmentation 1.2.2 imports ``mmcv.ops`` at module level in
   four files (``mmseg/utils/mask_classification.py``,
   ``mmseg/models/utils/point_sample.py``, ``decode_heads/san_head.py`` and
   ``losses/focal_loss.py``). With mmcv-lite (no compiled ``mmcv._ext``)
   ``import mmcv.ops`` fails, so ``import mmseg.models`` fails. When
   ``mmcv._ext`` is absent we register a small stand-in module as
   ``mmcv.ops``:

   - ``point_sample``: the exact pure-PyTorch function of mmcv
     (``F.grid_sample(input, 2 * points - 1, align_corners, **kwargs)``);
   - ``sigmoid_focal_loss``: raises a clear error naming compiled mmcv when
     called (it needs the CUDA/C++ kernel);
   - every other name raises ``ModuleNotFoundError`` on access, so mmseg's own
     ``try: from mmcv.ops import X / except ModuleNotFoundError`` fallbacks
     (``cc_head``, ``psa_head``, ``point_head``) keep working.

   With full mmcv installed nothing is touched.

2. **Checkpoints on torch >= 2.6.** ``torch.load`` defaults to
   ``weights_only=True``, and mmengine 0.10.7 calls it without the argument,
   so ``--resume`` fails on ``HistoryBuffer`` and numpy objects stored in the
   message hub. We allow-list exactly those globals with
   ``torch.serialization.add_safe_globals``; ``weights_only`` stays on, so a
   checkpoint that would run code is still refused.
"""
import importlib.util
import sys
import types
import warnings

import torch
import torch.nn.functional as F

_FULL_MMCV_HINT = (
    'it needs the compiled mmcv ops (mmcv._ext), which mmcv-lite does not '
    'ship. Install full mmcv 2.1.0 (`pip install -e .[full]`, built from '
    'source; see README "Troubleshooting") or pick a component that does '
    'not need compiled ops.')


def has_compiled_mmcv_ops() -> bool:
    """Whether the compiled mmcv extension ``mmcv._ext`` is importable."""
    try:
        return importlib.util.find_spec('mmcv._ext') is not None
    except (ImportError, ValueError):
        return False


def point_sample(input, points, align_corners=False, **kwargs):
    """Exact stand-in of ``mmcv.ops.point_sample`` (pure PyTorch upstream).

    Args:
        input (Tensor): feature map, (N, C, H, W).
        points (Tensor): normalised coordinates in [0, 1] x [0, 1],
            (N, P, 2) or (N, Hgrid, Wgrid, 2).
        align_corners (bool): passed to ``grid_sample``.
        **kwargs: forwarded to ``F.grid_sample`` (e.g. ``mode``).

    Returns:
        Tensor: (N, C, P) or (N, C, Hgrid, Wgrid).
    """
    add_dim = points.dim() == 3
    if add_dim:
        points = points.unsqueeze(2)
    output = F.grid_sample(
        input, 2.0 * points - 1.0, align_corners=align_corners, **kwargs)
    if add_dim:
        output = output.squeeze(3)
    return output


def sigmoid_focal_loss(*args, **kwargs):
    """Stand-in that fails loudly: the real op is a compiled kernel."""
    raise RuntimeError('mmcv.ops.sigmoid_focal_loss is not available: ' +
                       _FULL_MMCV_HINT +
                       ' For FocalLoss use use_sigmoid=False, which mmseg '
                       'computes in pure PyTorch.')


def _make_ops_standin() -> types.ModuleType:
    module = types.ModuleType(
        'mmcv.ops', 'wsss_zoo stand-in for mmcv.ops (mmcv-lite, no _ext).')
    module.point_sample = point_sample
    module.sigmoid_focal_loss = sigmoid_focal_loss
    module.__wsss_zoo_standin__ = True

    def __getattr__(name):
        if name.startswith('__'):
            raise AttributeError(name)
        raise ModuleNotFoundError(
            f'mmcv.ops.{name} is not available: ' + _FULL_MMCV_HINT,
            name='mmcv._ext')

    module.__getattr__ = __getattr__
    return module


def install_mmcv_ops_standin() -> bool:
    """Register the ``mmcv.ops`` stand-in if compiled ops are missing.

    Returns:
        bool: True if the stand-in is (now) in place, False if full mmcv is
        installed and nothing was done.
    """
    if has_compiled_mmcv_ops():
        return False
    current = sys.modules.get('mmcv.ops')
    if current is not None and getattr(current, '__wsss_zoo_standin__',
                                       False):
        return True
    standin = _make_ops_standin()
    sys.modules['mmcv.ops'] = standin
    try:
        import mmcv
        mmcv.ops = standin
    except ImportError:  # mmcv not installed at all; mmseg will say so
        pass
    return True


def _checkpoint_safe_globals():
    """Globals an mmengine 0.10.7 checkpoint needs beyond tensors."""
    import numpy as np
    from mmengine.logging.history_buffer import HistoryBuffer
    from numpy._core import multiarray

    safe = [HistoryBuffer, multiarray._reconstruct, multiarray.scalar,
            np.ndarray, np.dtype, getattr]
    # numpy scalars / arrays are rebuilt through their dtype classes.
    for name in dir(np.dtypes):
        obj = getattr(np.dtypes, name)
        if isinstance(obj, type) and issubclass(obj, np.dtype):
            safe.append(obj)
    # Checkpoints written under numpy 1.x name the old module path.
    safe += [(multiarray._reconstruct, 'numpy.core.multiarray._reconstruct'),
             (multiarray.scalar, 'numpy.core.multiarray.scalar')]
    return safe


def install_checkpoint_safe_globals() -> None:
    """Allow-list mmengine checkpoint contents for ``weights_only`` loads."""
    torch.serialization.add_safe_globals(_checkpoint_safe_globals())


def apply() -> None:
    """Apply every fix above (called by ``import wsss_zoo``)."""
    if install_mmcv_ops_standin():
        # mmcv.cnn.bricks.transformer warns on every import that the
        # compiled MultiScaleDeformableAttention is missing; no wsss_zoo
        # component uses it, so keep the logs readable.
        warnings.filterwarnings(
            'ignore', message='Fail to import ``MultiScaleDeformableAttention',
            category=UserWarning)
    install_checkpoint_safe_globals()
