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
   checkpoint that would run code is still refused. The message hub pickles
   ``getattr(HistoryBuffer, 'min')`` & co.; instead of the builtin
   ``getattr`` (which would let a pickle reach any attribute, e.g. a
   function's ``__globals__``) a stand-in that only returns those four
   ``HistoryBuffer`` methods is registered under its name.

3. **Checkpoints are data, never code.** mmengine's local checkpoint loader
   (used by ``resume``, ``load_from``, ``init_cfg=dict(type='Pretrained')``
   and ``tools/test.py CHECKPOINT``) is replaced by
   :func:`load_checkpoint_file`: ``torch.load(weights_only=True)`` passed
   explicitly (so ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` cannot turn it off)
   and a clear :class:`UnsafeCheckpointError` naming the file, the refused
   global and what to do.

4. **Crash-safe checkpoints.** mmengine's ``LocalBackend.put`` (which writes
   every checkpoint) writes through :func:`atomic_write`: a temporary file in
   the same folder, ``fsync``, then ``os.replace``. A run killed while saving
   never leaves a truncated ``iter_N.pth`` under its final name.

5. **setuptools >= 82.** mmengine 0.10.7 finds installed packages (for
   ``_base_ = ['mmseg::...']`` configs and ``mmengine.hub``) with
   ``pkg_resources``, which setuptools 82 removed. When ``pkg_resources``
   cannot be imported, ``is_installed`` / ``get_installed_path`` are
   replaced by equivalents on ``importlib.metadata``; otherwise nothing is
   touched.
"""
import importlib.util
import os
import os.path as osp
import pickle
import sys
import tempfile
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


# HistoryBuffer methods that mmengine's message hub pickles by reference
# (``getattr(HistoryBuffer, name)``, see HistoryBuffer.__getstate__).
_HISTORY_BUFFER_METHODS = ('min', 'max', 'current', 'mean')


def _checkpoint_getattr(obj, name):
    """``getattr`` as far as an mmengine checkpoint needs it, no further.

    Only ``HistoryBuffer.{min,max,current,mean}`` are returned; anything
    else (e.g. ``getattr(f, '__globals__')``) is refused.
    """
    from mmengine.logging.history_buffer import HistoryBuffer
    if obj is HistoryBuffer and name in _HISTORY_BUFFER_METHODS:
        return getattr(HistoryBuffer, name)
    raise pickle.UnpicklingError(
        f'refusing getattr({getattr(obj, "__name__", type(obj).__name__)}, '
        f'{name!r}): a checkpoint may only name the HistoryBuffer statistics '
        f'methods {_HISTORY_BUFFER_METHODS}')


def _checkpoint_safe_globals():
    """Globals an mmengine 0.10.7 checkpoint needs beyond tensors."""
    import numpy as np
    from mmengine.logging.history_buffer import HistoryBuffer
    from numpy._core import multiarray

    safe = [HistoryBuffer, multiarray._reconstruct, multiarray.scalar,
            np.ndarray, np.dtype, (_checkpoint_getattr, 'builtins.getattr')]
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
    # the builtin getattr (allow-listed by earlier wsss_zoo versions) would
    # shadow the restricted stand-in registered under the same name
    marked = getattr(torch.serialization, '_marked_safe_globals_set', None)
    if isinstance(marked, set):
        marked.discard(getattr)
    torch.serialization.add_safe_globals(_checkpoint_safe_globals())


# ---------------------------------------------------------------------------
# checkpoints are data: loading

class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint whose unpickling would call code or build non-data
    objects; raised instead of loading it."""


def _refused_detail(error: Exception) -> str:
    """The line of torch's weights_only error that names the refused global."""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    for key in ('GLOBAL', 'Unsupported global', 'Trying to call reduce',
                'Can only', 'refusing', 'Unsupported operand'):
        for line in lines:
            if key in line:
                return line
    return lines[-1] if lines else type(error).__name__


def load_checkpoint_file(filename, map_location=None):
    """``torch.load(filename, weights_only=True)`` with clear errors.

    Tensors, containers, numbers, strings and the allow-listed mmengine
    message-hub objects load; a pickle that would call anything else (e.g.
    ``os.system`` through ``__reduce__``) is refused before it runs.

    Args:
        filename (str | Path): local checkpoint file.
        map_location: as in ``torch.load``.

    Raises:
        FileNotFoundError: no such file.
        UnsafeCheckpointError: the file is not plain data (nothing in it
            was executed).
        RuntimeError: the file is truncated or not a torch checkpoint.
    """
    filename = osp.expanduser(str(filename))
    if not osp.isfile(filename):
        raise FileNotFoundError(f'{filename} can not be found.')
    try:
        return torch.load(filename, map_location=map_location,
                          weights_only=True)
    except pickle.UnpicklingError as e:
        raise UnsafeCheckpointError(
            f'refusing to load checkpoint {filename}: it is not plain data; '
            f'unpickling it would run code or build objects that are not '
            f'tensors/containers ({_refused_detail(e)}). Nothing in it was '
            'executed. wsss_zoo loads checkpoints with weights_only=True '
            'only. If the file comes from a source you trust, re-save its '
            "weights once in a throw-away environment: torch.save({'"
            "state_dict': torch.load(SRC, weights_only=False)['state_dict']"
            '}, DST), and use DST.') from None
    except RuntimeError as e:
        if 'zip archive' in str(e) or 'central directory' in str(e):
            raise RuntimeError(
                f'checkpoint {filename} is truncated or not a torch '
                f'checkpoint ({e}); it was probably cut off while being '
                'written or copied: copy it again, or resume from an '
                'earlier checkpoint.') from None
        raise


def install_safe_checkpoint_loader() -> None:
    """Make mmengine load local checkpoints with :func:`load_checkpoint_file`.

    Covers ``resume``, ``load_from``, ``init_cfg=dict(type='Pretrained')``
    and ``mmengine.runner.load_checkpoint`` for local paths.
    """
    from mmengine.runner.checkpoint import CheckpointLoader
    if getattr(CheckpointLoader._schemes.get(''), '__wsss_zoo_safe__',
               False):
        return

    def load_from_local(filename, map_location):
        return load_checkpoint_file(filename, map_location=map_location)

    load_from_local.__wsss_zoo_safe__ = True
    CheckpointLoader.register_scheme(
        prefixes='', loader=load_from_local, force=True)


# ---------------------------------------------------------------------------
# crash-safe writing

def atomic_write(path: str, write_fn, fsync: bool = True) -> None:
    """Write ``path`` through a temporary file in the same folder + rename.

    ``write_fn(tmp_path)`` writes the content into ``tmp_path``; it is
    flushed to disk (``fsync``) and renamed to ``path`` with ``os.replace``
    (atomic on POSIX file systems). A crash or kill at any point leaves
    either the old file or the complete new one under ``path``, never a
    partial file; a left-over temporary file is named ``.tmp_*<suffix>``.
    """
    folder = osp.dirname(path) or '.'
    os.makedirs(folder, exist_ok=True)
    suffix = osp.splitext(path)[1]
    fd, tmp = tempfile.mkstemp(dir=folder, prefix='.tmp_', suffix=suffix)
    os.close(fd)
    try:
        write_fn(tmp)
        if fsync:
            with open(tmp, 'rb') as f:
                os.fsync(f.fileno())
        # mkstemp creates the file 0600; give it the usual permissions
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if osp.exists(tmp):
            os.remove(tmp)
        raise


def install_atomic_checkpoint_saving() -> None:
    """Route mmengine ``LocalBackend.put`` (checkpoint saving) through
    :func:`atomic_write`."""
    from mmengine.fileio.backends.local_backend import LocalBackend
    if getattr(LocalBackend.put, '__wsss_zoo_atomic__', False):
        return

    def put(self, obj: bytes, filepath) -> None:
        def write(tmp):
            with open(tmp, 'wb') as f:
                f.write(obj)

        atomic_write(str(filepath), write)

    put.__doc__ = LocalBackend.put.__doc__
    put.__wsss_zoo_atomic__ = True
    LocalBackend.put = put


# ---------------------------------------------------------------------------
# setuptools >= 82: no pkg_resources

def _is_installed(package: str) -> bool:
    """``mmengine.utils.is_installed`` without ``pkg_resources``."""
    import importlib.metadata
    try:
        importlib.metadata.distribution(package)
        return True
    except importlib.metadata.PackageNotFoundError:
        spec = importlib.util.find_spec(package)
        return spec is not None and spec.origin is not None


def _get_installed_path(package: str) -> str:
    """``mmengine.utils.get_installed_path`` without ``pkg_resources``: the
    folder of the installed package (module) ``package``."""
    import importlib.metadata
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        spec = importlib.util.find_spec(package)
        if spec is None:
            raise
        if spec.origin is None:
            raise RuntimeError(f'{package} is a namespace package, which is '
                               'invalid for `get_install_path`') from None
        return osp.dirname(spec.origin)
    location = str(dist.locate_file(''))
    possible = osp.join(location, package)
    if osp.exists(possible):
        return possible
    top_level = (dist.read_text('top_level.txt') or '').split()
    if not top_level:
        raise ValueError(f'can not infer the module name of {package}')
    return osp.join(location, top_level[0])


def install_package_path_fallback() -> bool:
    """Give mmengine ``pkg_resources``-free package lookups if needed.

    Returns:
        bool: True if the fallback is (now) in place.
    """
    try:
        if importlib.util.find_spec('pkg_resources') is not None:
            return False
    except (ImportError, ValueError):
        pass
    import mmengine.utils
    import mmengine.utils.package_utils as package_utils
    from mmengine.config import config as config_module
    for module in (package_utils, mmengine.utils, config_module,
                   sys.modules.get('mmengine.hub.hub')):
        if module is None:
            continue
        if hasattr(module, 'is_installed'):
            module.is_installed = _is_installed
        if hasattr(module, 'get_installed_path'):
            module.get_installed_path = _get_installed_path
    return True


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
    install_safe_checkpoint_loader()
    install_atomic_checkpoint_saving()
    install_package_path_fallback()
