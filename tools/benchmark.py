"""Benchmark a config: training and CAM / inference images/s and peak
memory, each next to a baseline measured in the same run.

    python tools/benchmark.py CONFIG [--device cpu|cuda] [--batch-size B]
        [--shape H [W]] [--amp {off,fp16,bf16}] [--compile]
        [--tasks train cam infer head] [--scales 1.0 0.5 1.5 2.0]
        [--flip | --no-flip] [--cam-chunk N|0] [--warmup N] [--iters N]
        [--repeat N] [--seed S] [--out FILE.json] [--work-dir DIR]
        [--cfg-options k=v ...]

Inputs are synthetic random tensors of ``--shape`` (default: the config's
``data_preprocessor.size``); no dataset or checkpoint is read (weights are
randomly initialised; ``pretrained`` is ignored). Baselines:

* ``CAMSegmentor`` configs: ``train`` = the same model with attention
  materialised in every layer and MLPs that keep their GELU output for
  backward (``original_code_paths``: the original research code);
  ``cam`` = multi-scale + flip CAMs (``--scales``/``--flip``, default the
  config's ``cam_scales`` and ``tta_pipeline`` flip), the views of a batch
  at one scale in passes of ``--cam-chunk`` images (default: all at once on
  CUDA, 2 on CPU, the fastest there) vs. the original per-image, per-view
  loop (materialised attention); the masks of both paths are compared and
  the result reported.
* ``DEPICTHead`` configs: the same model with mmseg's
  ``SegmenterMaskTransformerHead`` (same backbone, embed dims and depth):
  ``train``, ``infer`` (``test_step``), ``head`` (the decode head alone on
  fixed backbone features) and parameter counts.

Times are the median over ``--repeat`` timings of ``--iters`` steps, after
``--warmup`` steps; fast and baseline timings alternate. Training uses the
config's ``optim_wrapper`` built by ``mmengine.optim.build_optim_wrapper``
(``AmpOptimWrapper`` with ``--amp``) and ``model.train_step``.
Modelled on mmseg's ``tools/analysis_tools/benchmark.py``.
"""
import argparse
import json
import os
import os.path as osp
import platform
import sys
import time

try:
    import wsss_zoo  # noqa: F401
except ImportError:  # running from a source checkout without install
    sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
    import wsss_zoo  # noqa: F401

import torch
from mmengine.config import Config, DictAction
from mmengine.logging import MMLogger
from mmengine.optim import build_optim_wrapper
from mmengine.registry import init_default_scope

from mmseg.registry import MODELS
from wsss_zoo.utils.benchmark import (bench_cam, bench_head, bench_infer,
                                      bench_train, count_params,
                                      optim_wrapper_cfg, random_img_labels,
                                      segmenter_baseline_cfg,
                                      synthetic_batch)

STAGE1_TASKS = ('train', 'cam')
DECODE_TASKS = ('train', 'infer', 'head')


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description='Throughput and peak memory vs. a baseline (synthetic '
        'inputs)')
    p.add_argument('config', help='config file')
    p.add_argument('--device', default=None,
                   help='cpu or cuda[:i] (default: cuda if available)')
    p.add_argument('--batch-size', type=int, default=8)
    p.add_argument('--shape', type=int, nargs='+', default=None,
                   help='input H [W] (default: data_preprocessor.size)')
    p.add_argument('--amp', choices=['off', 'fp16', 'bf16'], default='off',
                   help='mixed precision (AmpOptimWrapper; CUDA only)')
    p.add_argument('--compile', action='store_true',
                   help='torch.compile the measured steps (both paths)')
    p.add_argument('--tasks', nargs='+', default=None,
                   choices=sorted(set(STAGE1_TASKS + DECODE_TASKS)),
                   help='default: train cam (CAMSegmentor), train infer '
                   'head (decode heads)')
    p.add_argument('--scales', type=float, nargs='+', default=None,
                   help='CAM scales (default: cam_scales of the config)')
    p.add_argument('--flip', action=argparse.BooleanOptionalAction,
                   default=None,
                   help='add flipped views (default: as the tta_pipeline)')
    p.add_argument('--cam-chunk', type=int, default=None,
                   help='fast CAM path: at most this many images per '
                   'forward pass (0: all views of a scale in one pass; '
                   'default: 0 on CUDA, 2 on CPU)')
    p.add_argument('--warmup', type=int, default=2,
                   help='untimed steps per path (at least 3 with --compile)')
    p.add_argument('--iters', type=int, default=5,
                   help='steps per timing')
    p.add_argument('--repeat', '--repeat-times', type=int, default=3,
                   help='timings; the median is reported')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--out', default=None, help='write the results as JSON')
    p.add_argument('--work-dir', default=None,
                   help='write benchmark_<time>.json into this folder')
    p.add_argument('--cfg-options', nargs='+', action=DictAction)
    args = p.parse_args(argv)
    if args.shape is not None and len(args.shape) not in (1, 2):
        p.error(f'--shape takes H or H W, got {args.shape}')
    for name in ('batch_size', 'iters', 'repeat'):
        if getattr(args, name) < 1:
            p.error(f'--{name.replace("_", "-")} must be >= 1')
    if args.warmup < 0:
        p.error('--warmup must be >= 0')
    if args.cam_chunk is not None and args.cam_chunk < 0:
        p.error('--cam-chunk must be >= 0 (0: one pass per scale)')
    if args.compile and args.warmup < 3:
        # the first steps compile and recompile (optimiser state appears
        # after step 1, the baseline flags add guards): keep them untimed
        print(f'--compile: warm-up raised from {args.warmup} to 3 steps')
        args.warmup = 3
    if args.warmup == 0:
        # the fast path runs first: its first timed step would carry the
        # one-time costs (optimiser state, kernel selection); measured on
        # CPU, tiny configs: train fast/baseline 0.63-0.76x (batch 1, no
        # warm-up) vs 1.08-1.09x (batch 8, 2 warm-up steps)
        print('warning: --warmup 0 times one-time costs (optimiser state, '
              'first kernel calls) in the path that runs first; the ratios '
              'are not meaningful, use --warmup 1 or more')
    return args


# ----------------------------------------------------------------------
def _device(args) -> torch.device:
    name = args.device or ('cuda' if torch.cuda.is_available() else 'cpu')
    device = torch.device(name)
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise SystemExit('--device cuda: no CUDA device is available; use '
                         '--device cpu')
    if args.amp != 'off' and device.type != 'cuda':
        raise SystemExit(
            f'--amp {args.amp} needs a CUDA device (mmengine\'s '
            'AmpOptimWrapper is GPU-only); use --amp off on CPU')
    return device


def _shape(args, cfg):
    if args.shape:
        return (args.shape[0], args.shape[-1])
    size = cfg.model.get('data_preprocessor', {}).get('size')
    if not size:
        raise SystemExit('the config has no model.data_preprocessor.size: '
                         'give the input size with --shape H [W]')
    return tuple(int(s) for s in size)


def _cam_views(args, cfg):
    scales = args.scales or list(cfg.get('cam_scales', [1.0]))
    flip = args.flip
    if flip is None:  # a RandomFlip(prob=1) in the TTA pipeline
        flip = _has_sure_flip(cfg.get('tta_pipeline', []))
    return scales, bool(flip)


def _has_sure_flip(node) -> bool:
    """Whether a pipeline (nested lists / dicts) has RandomFlip(prob=1)."""
    if isinstance(node, dict):
        if node.get('type') == 'RandomFlip' and node.get('prob') == 1:
            return True
        return any(_has_sure_flip(v) for v in node.values())
    if isinstance(node, (list, tuple)):
        return any(_has_sure_flip(v) for v in node)
    return False


def _strip_pretrained(model_cfg):
    """No weights are loaded: random init is enough to time a model."""
    if 'pretrained' in model_cfg:
        model_cfg.pretrained = None
    for key in ('backbone', 'decode_head', 'cam_head'):
        sub = model_cfg.get(key)
        if isinstance(sub, dict):
            if 'pretrained' in sub:
                sub.pretrained = None
            sub.init_cfg = None


def build_model(model_cfg, device, seed):
    torch.manual_seed(seed)
    model = MODELS.build(model_cfg)
    model.init_weights()
    return model.to(device)


def run(args) -> dict:
    device = _device(args)
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    init_default_scope(cfg.get('default_scope', 'mmseg'))
    shape = _shape(args, cfg)
    B = args.batch_size
    cfg.model.setdefault('data_preprocessor', {})['size'] = shape
    _strip_pretrained(cfg.model)
    kind = 'stage1' if cfg.model.type == 'CAMSegmentor' else 'decode'
    if kind == 'decode' and 'decode_head' not in cfg.model:
        raise SystemExit(f'{args.config}: model {cfg.model.type!r} is '
                         'neither a CAMSegmentor nor has a decode_head')
    allowed = STAGE1_TASKS if kind == 'stage1' else DECODE_TASKS
    tasks = args.tasks or list(allowed)
    bad = [t for t in tasks if t not in allowed]
    if bad:
        raise SystemExit(f'tasks {bad} do not apply to a {cfg.model.type} '
                         f'config; choose from {list(allowed)}')
    if 'train' in tasks and 'optim_wrapper' not in cfg:
        raise SystemExit(f'{args.config} has no optim_wrapper to train with:'
                         ' add one (e.g. a schedule from configs/_base_/'
                         'schedules) or leave train out of --tasks')
    common = dict(device=device, warmup=args.warmup, iters=args.iters,
                  repeat=args.repeat)
    result = dict(
        config=args.config, model_type=cfg.model.type, device=str(device),
        device_name=(torch.cuda.get_device_name(device)
                     if device.type == 'cuda' else
                     f'{platform.processor() or platform.machine()} CPU, '
                     f'{os.cpu_count()} cores'),
        torch=torch.__version__, threads=torch.get_num_threads(),
        load_avg_start=list(os.getloadavg()), amp=args.amp,
        compile=args.compile, batch_size=B, shape=list(shape),
        warmup=args.warmup, iters=args.iters, repeat=args.repeat,
        unit='images / s', rows=[])
    # quiet: init_weights logs every parameter at INFO level
    MMLogger.get_instance('wsss_benchmark', log_level='WARNING')
    model = build_model(cfg.model, device, args.seed)
    rows = result['rows']
    if kind == 'stage1':
        result['baseline'] = ('same model, attention materialised in every '
                              'layer, MLPs keep their GELU output; CAMs per '
                              'image and per view')
        if 'train' in tasks:
            ow = build_optim_wrapper(
                model, optim_wrapper_cfg(cfg.optim_wrapper, args.amp))
            data = synthetic_batch(B, shape, model.num_classes, device,
                                   image_labels=True, seed=args.seed)
            rows.append(bench_train(model, ow, data, baseline='materialized',
                                    compile_steps=args.compile, **common))
        if 'cam' in tasks:
            scales, flip = _cam_views(args, cfg)
            g = torch.Generator().manual_seed(args.seed + 1)
            images = torch.randn(B, 3, *shape, generator=g).to(device)
            labels = random_img_labels(B, model.num_classes, g).to(device)
            chunk = args.cam_chunk
            if chunk is None:  # measured: README "Benchmark", CPU rows
                chunk = 2 if device.type == 'cpu' else 0
            rows.append(bench_cam(model, images, labels, scales, flip,
                                  amp=args.amp, compile_steps=args.compile,
                                  max_images_per_pass=chunk or None,
                                  **common))
        result['params'] = dict(model=count_params(model),
                                head=count_params(model.cam_head))
    else:
        base_model = None
        head_type = cfg.model.decode_head.get('type')
        if head_type == 'DEPICTHead':
            base_cfg = cfg.model.copy()
            base_cfg.decode_head = segmenter_baseline_cfg(cfg.model)
            base_model = build_model(base_cfg, device, args.seed)
            result['baseline'] = (
                "mmseg SegmenterMaskTransformerHead, same backbone, "
                f"embed_dims={base_cfg.decode_head['embed_dims']}, "
                f"num_layers={base_cfg.decode_head['num_layers']}, "
                f"num_heads={base_cfg.decode_head['num_heads']}")
        else:
            result['baseline'] = None  # no reference for this head
        num_classes = model.decode_head.num_classes

        def data_for(seed):
            return synthetic_batch(B, shape, num_classes, device,
                                   image_labels=False, seed=seed)

        if 'train' in tasks:
            ow_cfg = optim_wrapper_cfg(cfg.optim_wrapper, args.amp)
            ow = build_optim_wrapper(model, ow_cfg)
            base = {}
            if base_model is not None:
                base = dict(baseline='model', baseline_model=base_model,
                            baseline_optim_wrapper=build_optim_wrapper(
                                base_model, ow_cfg),
                            baseline_data=data_for(args.seed))
            rows.append(bench_train(model, ow, data_for(args.seed),
                                    compile_steps=args.compile, **base,
                                    **common))
        if 'infer' in tasks:
            rows.append(bench_infer(
                model, data_for(args.seed), amp=args.amp,
                baseline_model=base_model,
                baseline_data=None if base_model is None else data_for(
                    args.seed), compile_steps=args.compile, **common))
        if 'head' in tasks:
            data = model.data_preprocessor(data_for(args.seed), True)
            with torch.no_grad():
                feats = [f.detach() for f in model.extract_feat(
                    data['inputs'])]
            ow_cfg = optim_wrapper_cfg(cfg.optim_wrapper, args.amp)
            base_head = None if base_model is None else base_model.decode_head
            rows.extend(bench_head(
                model.decode_head, base_head, feats, data['data_samples'],
                build_optim_wrapper(model.decode_head, ow_cfg),
                None if base_head is None else build_optim_wrapper(
                    base_head, ow_cfg), model.parse_losses, amp=args.amp,
                compile_steps=args.compile, **common))
        params = dict(model=count_params(model),
                      head=count_params(model.decode_head),
                      baseline_model=count_params(base_model),
                      baseline_head=count_params(
                          None if base_model is None else
                          base_model.decode_head))
        if params['baseline_head']:
            params['head_ratio'] = params['head'] / params['baseline_head']
        result['params'] = params
    result['load_avg_end'] = list(os.getloadavg())
    return result


# ----------------------------------------------------------------------
def _fmt(value, spec):
    return '-' if value is None else format(value, spec)


def format_table(result: dict) -> str:
    """Markdown table of the rows, plus the mask check and parameters."""
    lines = [
        f"config: {result['config']} ({result['model_type']})",
        f"device: {result['device']} ({result['device_name']}, "
        f"{result['threads']} threads), amp {result['amp']}, compile "
        f"{result['compile']}, batch {result['batch_size']}, shape "
        f"{result['shape'][0]}x{result['shape'][1]}, warmup "
        f"{result['warmup']}, {result['iters']} iters x "
        f"{result['repeat']} repeats (median)",
        f"baseline: {result['baseline']}", '',
        '| task | images/s | baseline images/s | speed-up | peak MiB | '
        'baseline peak MiB | memory ratio |',
        '| --- | ---: | ---: | ---: | ---: | ---: | ---: |'
    ]
    for row in result['rows']:
        task = row['task']
        if task == 'cam':
            task += (f" ({len(row['scales'])} scales"
                     f"{' + flip' if row['flip'] else ''}, "
                     f"{row['max_images_per_pass'] or 'all'} per pass)")
        lines.append(
            f"| {task} | {_fmt(row['images_per_s'], '.3g')} | "
            f"{_fmt(row['baseline_images_per_s'], '.3g')} | "
            f"{_fmt(row['speedup'], '.2f')}x | "
            f"{_fmt(row['peak_mem_mb'], '.1f')} | "
            f"{_fmt(row['baseline_peak_mem_mb'], '.1f')} | "
            f"{_fmt(row['mem_ratio'], '.2f')}x |")
    for row in result['rows']:
        if row['task'] == 'cam':
            text = (f"\nCAM masks identical (batched vs per-image): "
                    f"{row['masks_identical']} ({row['mask_mismatch_pixels']}"
                    f" of {row['mask_pixels']} pixels differ")
            if not row['masks_identical']:
                text += (', all at float ties (score gap <= '
                         f"{row['tie_tol']:g})"
                         if row['mask_mismatch_at_ties_only'] else
                         ', NOT only at float ties: the paths disagree')
            lines.append(text + '; max |normalised CAM diff| '
                         f"{row['max_abs_norm_cam_diff']:.2e})")
    p = result.get('params', {})
    text = f"\nparameters: model {p.get('model', 0) / 1e6:.3f} M, head " \
        f"{p.get('head', 0) / 1e6:.3f} M"
    if p.get('baseline_head'):
        text += (f"; baseline model {p['baseline_model'] / 1e6:.3f} M, "
                 f"baseline head {p['baseline_head'] / 1e6:.3f} M "
                 f"(head ratio {p['head_ratio']:.2f}x)")
    lines.append(text)
    return '\n'.join(lines)


def main(argv=None):
    args = parse_args(argv)
    result = run(args)
    print(format_table(result))
    paths = []
    if args.out:
        paths.append(args.out)
    if args.work_dir:
        stamp = time.strftime('%Y%m%d_%H%M%S', time.localtime())
        paths.append(osp.join(args.work_dir, f'benchmark_{stamp}.json'))
    for path in paths:
        os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
        with open(path, 'w') as f:
            json.dump(result, f, indent=2)
        print(f'results written to {path}')
    return result


if __name__ == '__main__':
    main()
