"""Generate pseudo masks (and raw CAMs) with a trained stage-1 model.

    python tools/make_pseudo_labels.py CONFIG CHECKPOINT --out-dir DIR
        [--save-cams] [--no-tta] [--bg-thresh T] [--crf voc|coco] [--overwrite]
        [--batch-size N] [--eval] [--cfg-options k=v ...]
        [--launcher none|pytorch|slurm]

Runs mmengine's test loop over ``pseudo_label_dataloader`` of the config
(falls back to ``test_dataloader``), with the config's CAM TTA model
(multi-scale + flip) unless ``--no-tta``, and writes ``DIR/<image id>.png``
palette masks (and ``DIR/cams/<image id>.npz`` with ``--save-cams``).

Scale and failures:

- ``--launcher pytorch|slurm`` (torchrun / srun, GPU or CPU) shards the
  images over the processes with :class:`PseudoLabelSampler`: each image is
  done by exactly one rank, the union equals a 1-process run.
- Every file is written atomically (temporary name + rename), so a killed
  run leaves only complete files. A rerun skips images whose outputs all
  exist (the default; ``--skip-existing`` is accepted and means the same),
  ``--overwrite`` redoes every image.
- ``--eval`` scores the mask files on disk (all of them, also those kept
  from an earlier run) against the dataset's masks, on rank 0; the metrics
  go to ``<work_dir>/test_metrics.json`` (default work dir:
  ``DIR/.work_dir``).
- The checkpoint is loaded with ``weights_only=True`` and strictly: a
  checkpoint of another model / class count stops with the mismatching keys.
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
from mmengine.dist import is_main_process
from mmengine.logging import print_log
from mmengine.runner import Runner

from wsss_zoo.evaluation.pseudo_label_writer import evaluate_pseudo_labels
from wsss_zoo.utils.data_check import check_data_roots
from wsss_zoo.utils.launch import (dump_metrics, explain_registry_errors,
                                   finish_distributed, load_checkpoint_strict,
                                   prepare_launcher)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Make pseudo labels')
    parser.add_argument('config', help='stage-1 (CAMSegmentor) config')
    parser.add_argument('checkpoint', help='trained checkpoint')
    parser.add_argument('--out-dir', required=True, help='mask folder')
    parser.add_argument('--save-cams', action='store_true',
                        help='also save normalised and raw CAMs (.npz)')
    parser.add_argument('--no-tta', action='store_true',
                        help='single scale, no flip')
    parser.add_argument('--bg-thresh', type=float, default=None,
                        help='background threshold (default: config)')
    parser.add_argument('--crf', choices=['voc', 'coco'], default=None,
                        help='refine each mask with a dense CRF on its '
                        "image (WeakTr's label CRF, VOC or COCO settings; "
                        'needs pip install -e ".[crf]")')
    parser.add_argument('--overwrite', action='store_true',
                        help='redo images whose outputs already exist')
    parser.add_argument('--skip-existing', action='store_true',
                        help='keep complete outputs (the default; kept for '
                        'old scripts)')
    parser.add_argument('--batch-size', type=int, default=None)
    parser.add_argument('--eval', action='store_true',
                        help='report mIoU of the pseudo masks vs. GT masks')
    parser.add_argument('--work-dir', default=None)
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm'],
                        default='none')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    if args.overwrite and args.skip_existing:
        parser.error('--overwrite and --skip-existing contradict each other')
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def build_cfg(args):
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    cfg.work_dir = args.work_dir or osp.join(args.out_dir, '.work_dir')
    if not osp.isfile(args.checkpoint):
        raise FileNotFoundError(
            f'checkpoint not found: {osp.abspath(args.checkpoint)}')
    cfg.load_from = None  # loaded strictly in main()
    if 'pseudo_label_dataloader' in cfg:
        cfg.test_dataloader = cfg.pseudo_label_dataloader
    if args.batch_size:
        cfg.test_dataloader.batch_size = args.batch_size
    if args.bg_thresh is not None:
        cfg.model.setdefault('test_cfg', {})['bg_thresh'] = args.bg_thresh
    if args.save_cams:
        cfg.model.setdefault('test_cfg', {})['keep_raw_cams'] = True
    if not args.no_tta and 'tta_model' in cfg and 'tta_pipeline' in cfg:
        cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
        cfg.tta_model.module = cfg.model
        cfg.model = cfg.tta_model
    # each pending image exactly once over all ranks (no padding)
    cfg.test_dataloader.sampler = dict(
        type='PseudoLabelSampler', out_dir=args.out_dir,
        save_cams=args.save_cams, overwrite=args.overwrite)
    cfg.test_evaluator = dict(
        type='PseudoLabelWriter', out_dir=args.out_dir,
        save_cams=args.save_cams, overwrite=args.overwrite, crf=args.crf)
    cfg.default_hooks.pop('visualization', None)
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
        if args.eval and is_main_process():
            dataset = runner.test_loop.dataloader.dataset
            scores = evaluate_pseudo_labels(args.out_dir, dataset)
            print_log(f'pseudo-label scores ({args.out_dir}): {scores}',
                      logger='current')
            metrics.update(scores)
    dump_metrics(metrics, cfg.work_dir)
    return metrics


if __name__ == '__main__':
    main()
    finish_distributed()
