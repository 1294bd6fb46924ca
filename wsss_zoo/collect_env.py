"""Print the environment facts that matter for wsss_zoo bug reports.

    python -m wsss_zoo.collect_env

Lists Python, the platform, PyTorch (CUDA / cuDNN builds and devices),
torchvision, timm, mmengine, mmcv (full or lite, and whether the compiled
ops ``mmcv._ext`` are present), mmsegmentation, numpy, OpenCV, Pillow,
setuptools (>= 82 drops ``pkg_resources``, which mmengine 0.10.7 uses to
resolve ``mmseg::`` config paths), wsss_zoo and the torch.load default.
Nothing is downloaded; a missing package is reported as such.
"""
import importlib
import importlib.metadata
import os
import platform
import sys
from collections import OrderedDict


def _version(dist: str, module: str = None) -> str:
    """Installed version of a distribution, or why there is none."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        pass
    if module:
        try:
            return getattr(importlib.import_module(module), '__version__',
                           'installed (version unknown)')
        except Exception as e:  # noqa: BLE001 (reported)
            return f'not importable ({type(e).__name__}: {e})'
    return 'not installed'


def _mmcv_info(env: 'OrderedDict[str, str]') -> None:
    from wsss_zoo.compat import has_compiled_mmcv_ops
    full = _version('mmcv')
    lite = _version('mmcv-lite')
    if full != 'not installed':
        env['mmcv'] = f'{full} (full)'
    elif lite != 'not installed':
        env['mmcv'] = f'{lite} (mmcv-lite: no compiled ops)'
    else:
        env['mmcv'] = _version('mmcv', 'mmcv')
    compiled = has_compiled_mmcv_ops()
    env['mmcv compiled ops (mmcv._ext)'] = (
        'yes' if compiled else
        'no (wsss_zoo uses pure-PyTorch stand-ins; mmseg components that '
        'need compiled ops raise a clear error)')
    if compiled:
        try:
            from mmcv import ops
            env['mmcv compiler'] = ops.get_compiler_version()
            env['mmcv CUDA compiler'] = ops.get_compiling_cuda_version()
        except Exception as e:  # noqa: BLE001 (reported)
            env['mmcv compiled ops (mmcv._ext)'] = (
                f'present but not loadable ({type(e).__name__}: {e})')


def collect_env() -> 'OrderedDict[str, str]':
    """The environment as an ordered ``{name: description}`` dict."""
    env = OrderedDict()
    env['sys.platform'] = sys.platform
    env['Python'] = sys.version.replace('\n', ' ')
    env['OS'] = platform.platform()
    try:
        import torch
        env['PyTorch'] = torch.__version__
        env['PyTorch CUDA build'] = str(torch.version.cuda)
        cuda = torch.cuda.is_available()
        env['CUDA available'] = str(cuda)
        if cuda:
            env['cuDNN'] = str(torch.backends.cudnn.version())
            names = {}
            for i in range(torch.cuda.device_count()):
                names.setdefault(torch.cuda.get_device_name(i), []).append(i)
            for name, ids in names.items():
                env[f'GPU {",".join(map(str, ids))}'] = name
        env['torch.distributed backends'] = ', '.join(
            b for b, ok in (('gloo', torch.distributed.is_gloo_available()),
                            ('nccl', torch.distributed.is_nccl_available()),
                            ('mpi', torch.distributed.is_mpi_available()))
            if ok) or 'none'
        env['torch.load weights_only default'] = (
            'True (torch >= 2.6)' if tuple(
                int(x) for x in torch.__version__.split('+')[0].split('.')[:2]
            ) >= (2, 6) else 'False (torch < 2.6: wsss_zoo passes '
            'weights_only=True itself)')
        forced = os.environ.get('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD')
        if forced:
            env['TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD'] = (
                f'{forced} (ignored by wsss_zoo loaders, which pass '
                'weights_only=True explicitly)')
    except ImportError as e:
        env['PyTorch'] = f'not importable ({e})'
    env['torchvision'] = _version('torchvision')
    env['timm'] = _version('timm')
    env['mmengine'] = _version('mmengine')
    _mmcv_info(env)
    env['mmsegmentation'] = _version('mmsegmentation', 'mmseg')
    env['numpy'] = _version('numpy')
    env['OpenCV'] = _version('opencv-python', 'cv2') if _version(
        'opencv-python') != 'not installed' else _version(
            'opencv-python-headless', 'cv2')
    env['Pillow'] = _version('Pillow')
    setuptools = _version('setuptools')
    env['setuptools'] = setuptools
    try:
        major = int(setuptools.split('.')[0])
    except ValueError:
        major = 0
    if major >= 82:
        env['setuptools'] += (' (>= 82 has no pkg_resources: mmengine '
                              'cannot resolve `mmseg::` _base_ paths; '
                              'pip install "setuptools<82")')
    from wsss_zoo.version import __version__
    env['wsss_zoo'] = __version__
    return env


def main() -> None:
    import wsss_zoo  # noqa: F401  (applies the compat fixes, as at run time)
    for name, value in collect_env().items():
        print(f'{name}: {value}')


if __name__ == '__main__':
    main()
