"""Train a model with mmengine's Runner (mmseg's tools/train.py CLI).

    python tools/train.py CONFIG [--work-dir DIR] [--resume] [--amp]
        [--cfg-options k=v ...] [--launcher none|pytorch|slurm|mpi]

Differences from mmseg's script: ``wsss_zoo`` is imported first (mmcv-lite
stand-ins, torch >= 2.6 checkpoint allow-list), a missing dataset folder
fails before anything is built, ``--launcher pytorch|slurm`` also works
on CPU-only machines (gloo), ``--resume`` falls back to the newest complete
checkpoint when ``last_checkpoint`` is missing or names a broken file, and a
misspelt ``type=`` lists the close registered names.
"""
import argparse
import logging
import os
import os.path as osp
import sys

try:
    import wsss_zoo  # noqa: F401
except ImportError:  # running from a source checkout without install
    sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
    import wsss_zoo  # noqa: F401

from mmengine.config import Config, DictAction
from mmengine.logging import print_log
from mmengine.runner import Runner

from mmseg.registry import RUNNERS
from wsss_zoo.utils.config import merge_cfg_options
from wsss_zoo.utils.data_check import check_data_roots
from wsss_zoo.utils.launch import (explain_registry_errors,
                                   finish_distributed, prepare_launcher,
                                   resolve_resume)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Train a segmentor')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument(
        '--resume', action='store_true', default=False,
        help='resume from the latest checkpoint in the work_dir')
    parser.add_argument(
        '--amp', action='store_true', default=False,
        help='enable automatic-mixed-precision training')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
        help='override settings of the config, key=value (mmengine syntax)')
    parser.add_argument(
        '--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
        default='none', help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def build_cfg(args):
    cfg = Config.fromfile(args.config)
    if args.cfg_options is not None:
        merge_cfg_options(cfg, args.cfg_options)
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs',
                                osp.splitext(osp.basename(args.config))[0])
    if args.amp:
        if cfg.optim_wrapper.type == 'AmpOptimWrapper':
            print_log('AMP training is already enabled in your config.',
                      logger='current', level=logging.WARNING)
        elif cfg.optim_wrapper.type != 'OptimWrapper':
            raise ValueError('--amp needs optim_wrapper.type=OptimWrapper, '
                             f'got {cfg.optim_wrapper.type}')
        else:
            cfg.optim_wrapper.type = 'AmpOptimWrapper'
            cfg.optim_wrapper.loss_scale = 'dynamic'
    cfg.resume = args.resume
    resolve_resume(cfg)
    check_data_roots(cfg, ('train_dataloader', 'val_dataloader'))
    prepare_launcher(cfg, args.launcher)
    return cfg


def main(argv=None):
    args = parse_args(argv)
    with explain_registry_errors():
        cfg = build_cfg(args)
        if 'runner_type' in cfg:
            runner = RUNNERS.build(cfg)
        else:
            runner = Runner.from_cfg(cfg)
        runner.train()
    return runner


if __name__ == '__main__':
    main()
    finish_distributed()
