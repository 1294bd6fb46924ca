"""Test (and evaluate) a model with mmengine's Runner (mmseg's CLI).

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out DIR]
        [--show] [--show-dir DIR] [--tta] [--cfg-options k=v ...]
        [--launcher none|pytorch|slurm|mpi]

``--out DIR`` writes one PNG mask per image (for a CAMSegmentor these are
the pseudo labels). ``--tta`` swaps in the config's ``tta_pipeline`` and
``tta_model`` (for CAM models: multi-scale + flip CAM aggregation).
The metrics are also written to ``<work_dir>/test_metrics.json``.
Checkpoints are loaded with ``weights_only=True`` and strictly (a checkpoint
of another model or class count stops with the mismatching keys); a
misspelt ``type=`` lists the close registered names.
"""
import argparse
import os
import os.path as osp
import sys

try:
    import wsss_zoo  # noqa: F401
except ImportError:  # running from a source checkout without install
    sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
    import wsss_zoo  # noqa: F401

from mmengine.config import Config, DictAction
from mmengine.runner import Runner

from wsss_zoo.utils.config import merge_cfg_options
from wsss_zoo.utils.data_check import check_data_roots
from wsss_zoo.utils.launch import (dump_metrics, explain_registry_errors,
                                   finish_distributed, load_checkpoint_strict,
                                   prepare_launcher)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='MMSeg test (and eval) a model')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='dir for logs and metric json')
    parser.add_argument(
        '--out', type=str,
        help='directory to save predicted masks (PNG) for offline use')
    parser.add_argument(
        '--show', action='store_true', help='show prediction results')
    parser.add_argument(
        '--show-dir', help='directory where painted images are saved')
    parser.add_argument(
        '--wait-time', type=float, default=2, help='the interval of show (s)')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
        help='override settings of the config, key=value (mmengine syntax)')
    parser.add_argument(
        '--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
        default='none', help='job launcher')
    parser.add_argument(
        '--tta', action='store_true', help='Test time augmentation')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def _evaluators(cfg):
    evaluator = cfg.test_evaluator
    return list(evaluator) if isinstance(evaluator, (list, tuple)) else [
        evaluator]


def build_cfg(args):
    cfg = Config.fromfile(args.config)
    if args.cfg_options is not None:
        merge_cfg_options(cfg, args.cfg_options)
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs',
                                osp.splitext(osp.basename(args.config))[0])
    if not osp.isfile(args.checkpoint):
        raise FileNotFoundError(f'checkpoint not found: '
                                f'{osp.abspath(args.checkpoint)}')
    cfg.load_from = None  # loaded strictly in main()

    if args.show or args.show_dir:
        hooks = cfg.default_hooks
        if 'visualization' not in hooks:
            raise RuntimeError(
                '--show/--show-dir need default_hooks.visualization='
                "dict(type='SegVisualizationHook') in the config")
        hooks.visualization.draw = True
        if args.show:
            hooks.visualization.show = True
            hooks.visualization.wait_time = args.wait_time
        if args.show_dir:
            cfg.visualizer.save_dir = args.show_dir

    if args.tta:
        if 'tta_model' not in cfg or 'tta_pipeline' not in cfg:
            raise ValueError(
                '--tta needs `tta_model` and `tta_pipeline` in the config')
        cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
        cfg.tta_model.module = cfg.model
        cfg.model = cfg.tta_model

    if args.out is not None:
        # The first evaluator that can write masks (IoUMetric and our CAM
        # metrics accept output_dir) writes one PNG per image.
        evaluators = _evaluators(cfg)
        evaluators[0]['output_dir'] = args.out
        os.makedirs(args.out, exist_ok=True)

    check_data_roots(cfg, ('test_dataloader', ))
    prepare_launcher(cfg, args.launcher)
    return cfg


def main(argv=None):
    args = parse_args(argv)
    with explain_registry_errors():
        cfg = build_cfg(args)
        runner = Runner.from_cfg(cfg)
        load_checkpoint_strict(runner, args.checkpoint, args.config)
        metrics = runner.test()
    dump_metrics(metrics, cfg.work_dir)
    return metrics


if __name__ == '__main__':
    main()
    finish_distributed()
