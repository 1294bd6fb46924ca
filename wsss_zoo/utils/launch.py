"""Helpers of the tools: CPU launchers, resuming, strict checkpoint loading,
readable registry errors, atomic metric files.

CPU launchers: mmengine 0.10.7's ``init_dist('pytorch')`` calls
``torch.cuda.set_device`` unconditionally and ``Runner.wrap_model`` passes
``device_ids=[LOCAL_RANK]`` to DDP, so ``--launcher pytorch`` cannot start
without a GPU. When no GPU is present we initialise the process group
ourselves with gloo (the Runner then skips its own ``init_dist``), let DDP
wrap CPU modules (``device_ids=None``) and replace ``SyncBN`` (GPU-only) by
``BN`` with a warning.
"""
import contextlib
import difflib
import glob
import json
import logging
import os
import os.path as osp
import re
import zipfile
from typing import List, Optional

import torch
import torch.distributed as dist
from mmengine.logging import print_log

from wsss_zoo.compat import atomic_write


def _replace_syncbn(node, path, changed):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == 'type' and value == 'SyncBN':
                node[key] = 'BN'
                changed.append(path or '<root>')
            else:
                _replace_syncbn(value, f'{path}.{key}' if path else key,
                                changed)
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            _replace_syncbn(value, f'{path}[{i}]', changed)


def _init_cpu_process_group(launcher: str) -> None:
    if dist.is_available() and dist.is_initialized():
        return
    if launcher == 'slurm':
        if 'SLURM_PROCID' not in os.environ:
            raise RuntimeError(
                '--launcher slurm: SLURM_PROCID is not set; start one task '
                'per process with srun, e.g. srun --ntasks=4 python '
                'tools/train.py CONFIG --launcher slurm')
        # Translate SLURM variables into the env:// rendezvous of torch.
        os.environ.setdefault('RANK', os.environ['SLURM_PROCID'])
        os.environ.setdefault('WORLD_SIZE', os.environ['SLURM_NTASKS'])
        os.environ.setdefault('LOCAL_RANK', os.environ.get('SLURM_LOCALID',
                                                           '0'))
        os.environ.setdefault('MASTER_PORT', '29500')
        if 'MASTER_ADDR' not in os.environ and 'SLURM_NODELIST' in os.environ:
            # as mmengine does on GPU: the first node of the allocation
            import subprocess
            try:
                first = subprocess.run(
                    ['scontrol', 'show', 'hostnames',
                     os.environ['SLURM_NODELIST']], capture_output=True,
                    text=True).stdout.split()
            except OSError:  # no scontrol on this node
                first = []
            if first:
                os.environ['MASTER_ADDR'] = first[0]
        if 'MASTER_ADDR' not in os.environ:
            raise RuntimeError(
                'CPU slurm launch: set MASTER_ADDR to the first node of the '
                'allocation, e.g. export MASTER_ADDR=$(scontrol show '
                'hostnames "$SLURM_JOB_NODELIST" | head -n 1)')
    missing = [k for k in ('RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT')
               if k not in os.environ]
    if missing:
        raise RuntimeError(
            f'--launcher {launcher} needs the environment variables {missing};'
            ' start the script with torchrun or srun.')
    dist.init_process_group(backend='gloo', init_method='env://')


def prepare_launcher(cfg, launcher: str) -> None:
    """Adapt ``cfg`` in place so ``launcher`` also works without a GPU.

    Does nothing for ``launcher='none'`` or when CUDA is available.
    """
    cfg.launcher = launcher
    if launcher == 'none' or torch.cuda.is_available():
        return
    if launcher not in ('pytorch', 'slurm'):
        raise RuntimeError(f'--launcher {launcher} is not supported on a '
                           'machine without GPU; use pytorch or slurm.')
    _init_cpu_process_group(launcher)
    env_cfg = cfg.setdefault('env_cfg', {})
    env_cfg.setdefault('dist_cfg', {})['backend'] = 'gloo'
    wrapper = cfg.get('model_wrapper_cfg') or dict(
        type='MMDistributedDataParallel')
    wrapper['device_ids'] = None
    wrapper.setdefault('broadcast_buffers', False)
    cfg.model_wrapper_cfg = wrapper
    changed = []
    _replace_syncbn(cfg.model, 'model', changed)
    if changed:
        print_log(
            'SyncBN only runs on GPU; using BN on CPU for: ' +
            ', '.join(changed), logger='current', level=logging.WARNING)


def dump_metrics(metrics: dict, work_dir: str) -> None:
    """Write test metrics to ``<work_dir>/test_metrics.json`` (rank 0,
    atomically)."""
    from mmengine.dist import is_main_process
    if not is_main_process():
        return
    os.makedirs(work_dir, exist_ok=True)
    plain = {}
    for key, value in metrics.items():
        try:
            plain[key] = float(value)
        except (TypeError, ValueError):
            plain[key] = str(value)

    def write(tmp):
        with open(tmp, 'w') as f:
            json.dump(plain, f, indent=2)

    atomic_write(osp.join(work_dir, 'test_metrics.json'), write)


def finish_distributed() -> None:
    """Wait for every rank, then close the process group.

    Without it a rank that finishes early (the others still evaluating on
    rank 0, say) tears down gloo's threads at interpreter exit and can
    abort ('terminate called without an active exception'), which torchrun
    reports as a failed job although every output was written.
    """
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


# ---------------------------------------------------------------------------
# resuming after a kill

def is_complete_checkpoint(path: str) -> bool:
    """Cheap check that ``path`` is a whole torch checkpoint file.

    A zip checkpoint (torch >= 1.6 default) must have its central directory
    (written last); a legacy pickle file only needs to be non-empty.
    """
    try:
        if not osp.isfile(path) or osp.getsize(path) == 0:
            return False
        with open(path, 'rb') as f:
            magic = f.read(2)
        return zipfile.is_zipfile(path) if magic == b'PK' else True
    except OSError:
        return False


def _checkpoint_order(path: str):
    match = re.search(r'(\d+)\.pth$', osp.basename(path))
    return (int(match.group(1)) if match else -1, osp.getmtime(path))


def resolve_resume(cfg) -> Optional[str]:
    """Make ``--resume`` survive a run killed at any moment.

    mmengine resumes from the file named in ``<work_dir>/last_checkpoint``.
    If that pointer is missing, empty or names a missing / incomplete file
    (e.g. the job was killed while saving, or ``work_dir`` was moved), the
    newest complete ``iter_*.pth`` / ``epoch_*.pth`` of ``work_dir`` is
    resumed instead (set as ``cfg.load_from`` with ``cfg.resume=True``).
    Does nothing without ``cfg.resume`` or when ``cfg.load_from`` is set.

    Returns:
        str | None: the checkpoint chosen here, None if mmengine's own choice
        stands (or there is nothing to resume: training starts from 0).
    """
    if not cfg.get('resume') or cfg.get('load_from'):
        return None
    work_dir = cfg.work_dir
    pointer = osp.join(work_dir, 'last_checkpoint')
    last = ''
    if osp.isfile(pointer):
        with open(pointer) as f:
            last = f.read().strip()
    if last and is_complete_checkpoint(last):
        return None
    found = glob.glob(osp.join(work_dir, 'iter_*.pth')) + glob.glob(
        osp.join(work_dir, 'epoch_*.pth'))
    for path in sorted(found, key=_checkpoint_order, reverse=True):
        if is_complete_checkpoint(path):
            why = (f'last_checkpoint names {last}, which is missing or '
                   'incomplete' if last else 'no last_checkpoint file')
            print_log(f'--resume: {why}; resuming from {path}',
                      logger='current', level=logging.WARNING)
            cfg.load_from = path
            return path
    if last:
        print_log(
            f'--resume: last_checkpoint names {last}, which is missing or '
            f'incomplete, and {work_dir} holds no other complete checkpoint: '
            'training starts from iteration 0.', logger='current',
            level=logging.WARNING)
        os.replace(pointer, pointer + '.invalid')
    return None


# ---------------------------------------------------------------------------
# strict checkpoint loading for inference

def load_checkpoint_strict(runner, checkpoint: str, config: str = '') -> None:
    """Load ``checkpoint`` into ``runner.model`` with every key and shape
    matching (mmengine's default ``load_from`` only warns and keeps random
    weights for what does not fit).

    Raises:
        ValueError: missing / unexpected keys or shape mismatches, listed
            by mmengine, with the usual cause (another ``num_classes`` or
            model size) named.
    """
    try:
        runner.load_checkpoint(checkpoint, strict=True)
    except RuntimeError as e:
        if 'do not match' not in str(e) and 'size mismatch' not in str(e):
            raise
        raise ValueError(
            f'checkpoint {checkpoint} does not fit the model of '
            f'{config or "the config"}:\n{e}\nA size mismatch of a '
            'class-wise tensor (cls_token, head, cam_head.*, conv_seg) means '
            'the checkpoint was trained for another number of classes: set '
            'num_classes (and the dataset / label file) of the config to '
            'what the checkpoint was trained with, or use the config it was '
            'trained with. Other mismatches mean another model size '
            '(embed_dims, num_layers, patch_size).') from None


# ---------------------------------------------------------------------------
# readable registry errors

_UNKNOWN_TYPE = re.compile(
    r"(?P<name>[^\s'\"`]+) is not in the (?P<scope>[\w.]+)::"
    r'(?P<registry>[\w ]+?) registry')


class UnknownTypeError(KeyError):
    """``type=`` names nothing registered; the message lists close names."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ''


def registered_names(registry_name: str) -> List[str]:
    """Every name registered in the ``registry_name`` registries (all
    scopes: mmengine, mmcv, mmseg, wsss_zoo's additions)."""
    import mmengine.registry as mm_registry

    import mmseg.registry  # noqa: F401  (builds the mmseg children)
    roots = [
        obj for obj in vars(mm_registry).values()
        if isinstance(obj, mm_registry.Registry) and obj.name ==
        registry_name and obj.parent is None
    ]
    names, stack = set(), list(roots)
    while stack:
        reg = stack.pop()
        names.update(reg.module_dict)
        stack.extend(reg.children.values())
    return sorted(names)


def explain_unknown_type(message: str) -> Optional[str]:
    """A clear message for mmengine's "X is not in the scope::kind registry"
    error, with the closest registered names; None for other errors."""
    match = _UNKNOWN_TYPE.search(message)
    if match is None:
        return None
    name, registry = match.group('name'), match.group('registry')
    names = registered_names(registry)
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.6)
    close += [n for n in names if n.lower() == name.lower() and n not in close]
    where = re.match(r'class `(\w+)`', message)
    hint = (f'did you mean {", ".join(repr(n) for n in close)}?'
            if close else f'no registered {registry} name is close to it.')
    return (f"unknown {registry} type {name!r}"
            f"{f' (inside {where.group(1)})' if where else ''}: {hint} Fix "
            f"type={name!r} in the config; if the type comes from a plugin, "
            "add its package to custom_imports (wsss_zoo types need "
            "custom_imports=dict(imports=['wsss_zoo'])).")


@contextlib.contextmanager
def explain_registry_errors():
    """Turn "not in the registry" ``KeyError``s into :class:`UnknownTypeError`
    listing the close registered names (used around the tools' runs)."""
    try:
        yield
    except KeyError as e:
        text = str(e.args[0]) if e.args else str(e)
        hint = explain_unknown_type(text)
        if hint is None:
            raise
        raise UnknownTypeError(hint) from None
