"""Shared helpers of the reliability tests: a tiny MCTformer config on a tiny
SynthShapes copy, and subprocess runners for the tools (plain and torchrun)
that can be killed as a whole job."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
BASE_CONFIG = (REPO / 'configs' / 'mctformer' /
               'mctformer-v1_vit-t8_1xb16-2k_synthshapes-96x96.py')

_TINY = '''
_base_ = [{base!r}]
custom_imports = dict(imports=['wsss_zoo', 'reliability_plugin'],
                      allow_failed_imports=False)
data_root = {root!r}
model = dict(
    backbone=dict(embed_dims=64, num_layers=2, num_heads=4),
    cam_head=dict(in_channels=64, cam_layers=2))
train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                        dataset=dict(data_root=data_root))
val_dataloader = None
val_cfg = None
val_evaluator = None
test_dataloader = dict(num_workers=0, persistent_workers=False,
                       dataset=dict(data_root=data_root))
pseudo_label_dataloader = dict(batch_size=2, num_workers=0,
                               dataset=dict(data_root=data_root))
train_cfg = dict(max_iters=8, val_interval=1000)
default_hooks = dict(checkpoint=dict(interval=2, max_keep_ckpts=10),
                     logger=dict(interval=1))
randomness = dict(seed=0, deterministic=True)
'''


def write_tiny_config(path: Path, data_root: Path, extra: str = '') -> Path:
    """A config file inheriting the synthetic MCTformer-V1 config with a
    2-layer 64-d model, batch 2, 8 iterations, checkpoints every 2."""
    path.write_text(
        _TINY.format(base=str(BASE_CONFIG), root=str(data_root)) + extra)
    return path


def make_tiny_dataset(root: Path, num_train: int = 24, num_val: int = 4):
    from wsss_zoo.datasets.synthetic import make_synthshapes
    make_synthshapes(str(root), num_train=num_train, num_val=num_val, seed=0)
    return root


def save_random_checkpoint(config: Path, path: Path, seed: int = 0) -> Path:
    """Random-weight checkpoint of ``config``'s model, saved as mmengine
    saves (``meta`` + ``state_dict``)."""
    import torch
    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    from mmseg.registry import MODELS
    cfg = Config.fromfile(str(config))
    init_default_scope('mmseg')
    torch.manual_seed(seed)
    model = MODELS.build(cfg.model)
    torch.save(dict(meta=dict(), state_dict=model.state_dict()), path)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def torchrun(nproc: int = 2) -> list:
    return [sys.executable, '-m', 'torch.distributed.run',
            f'--nproc_per_node={nproc}', f'--master_port={free_port()}']


def run_tool(args, launcher=None, timeout=300, env=None):
    """Run ``python TOOL ARGS`` (or ``torchrun ... TOOL ARGS``) in its own
    session, so that a job that SIGKILLs its process group stays contained.

    Returns:
        CompletedProcess with ``stdout``/``stderr`` text.
    """
    full_env = dict(os.environ, PYTHONUNBUFFERED='1', OMP_NUM_THREADS='1',
                    PYTHONPATH=os.pathsep.join([str(TESTS), str(REPO)]))
    full_env.update(env or {})
    cmd = (launcher or [sys.executable]) + [str(a) for a in args]
    proc = subprocess.Popen(cmd, cwd=REPO, env=full_env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        out, err = proc.communicate()
        raise AssertionError(f'timed out: {cmd}\n{out[-2000:]}{err[-4000:]}')
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def ok(proc):
    assert proc.returncode == 0, (proc.args, proc.stdout[-3000:],
                                  proc.stderr[-6000:])
    return proc


def train_losses(work_dir: Path) -> dict:
    """{iteration: loss} from every run's ``vis_data/scalars.json``."""
    losses = {}
    for path in sorted(work_dir.glob('*/vis_data/scalars.json')):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            if 'loss' in record and 'step' in record:
                losses[record['step']] = record['loss']
    return losses


def run_slurm_tasks(args, ntasks: int = 2, timeout=300):
    """Start ``ntasks`` processes of ``python TOOL ARGS --launcher slurm``
    with the variables ``srun`` sets (SLURM_PROCID, SLURM_NTASKS, ...), as
    ``srun --ntasks=N`` on one node would; MASTER_ADDR is given because the
    test machine has no ``scontrol``.

    Returns:
        list of CompletedProcess, one per task.
    """
    port = str(free_port())
    procs = []
    for rank in range(ntasks):
        env = dict(os.environ, PYTHONUNBUFFERED='1', OMP_NUM_THREADS='1',
                   PYTHONPATH=os.pathsep.join([str(TESTS), str(REPO)]),
                   SLURM_PROCID=str(rank), SLURM_NTASKS=str(ntasks),
                   SLURM_LOCALID=str(rank), SLURM_NODELIST='localhost',
                   MASTER_ADDR='127.0.0.1', MASTER_PORT=port)
        cmd = [sys.executable] + [str(a) for a in args] + [
            '--launcher', 'slurm']
        procs.append(subprocess.Popen(
            cmd, cwd=REPO, env=env, text=True, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, start_new_session=True))
    results = []
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for p in procs:
                os.killpg(p.pid, 9)
            raise AssertionError(f'timed out: {proc.args}')
        results.append(subprocess.CompletedProcess(proc.args,
                                                   proc.returncode, out, err))
    return results
