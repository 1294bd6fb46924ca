"""Make mmengine's launchers work on CPU-only machines.

mmengine 0.10.7's ``init_dist('pytorch')`` calls ``torch.cuda.set_device``
unconditionally and ``Runner.wrap_model`` passes ``device_ids=[LOCAL_RANK]``
to DDP, so ``--launcher pytorch`` cannot start without a GPU. When no GPU is
present we initialise the process group ourselves with gloo (the Runner then
skips its own ``init_dist``), let DDP wrap CPU modules (``device_ids=None``)
and replace ``SyncBN`` (GPU-only) by ``BN`` with a warning.
"""
import json
import logging
import os
import os.path as osp

import torch
import torch.distributed as dist
from mmengine.logging import print_log


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
        # Translate SLURM variables into the env:// rendezvous of torch.
        os.environ.setdefault('RANK', os.environ['SLURM_PROCID'])
        os.environ.setdefault('WORLD_SIZE', os.environ['SLURM_NTASKS'])
        os.environ.setdefault('LOCAL_RANK', os.environ.get('SLURM_LOCALID',
                                                           '0'))
        os.environ.setdefault('MASTER_PORT', '29500')
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
            ' start the script with torchrun (tools/dist_train.sh) or srun.')
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
    """Write test metrics to ``<work_dir>/test_metrics.json`` (rank 0)."""
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
    with open(osp.join(work_dir, 'test_metrics.json'), 'w') as f:
        json.dump(plain, f, indent=2)
