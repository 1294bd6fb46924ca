"""Measurements behind ``tools/benchmark.py``: throughput, peak memory,
parameter counts, each next to a baseline measured in the same run.

Baselines:

* stage 1 (``CAMSegmentor``): the same model with attention materialised in
  every layer and MLPs that keep their GELU output
  (:func:`original_code_paths`, what the original research code does), and
  for CAMs the original per-image, per-view loop
  (:func:`per_image_ms_cams`) against the batched multi-scale + flip path
  (:func:`batched_ms_cams`);
* ``DEPICTHead``: mmseg's ``SegmenterMaskTransformerHead`` on the same
  backbone, with the same embed dims and depth (:func:`segmenter_baseline_cfg`).

Training goes through mmengine: the optim wrapper is built from the config
with ``build_optim_wrapper`` (``AmpOptimWrapper`` for AMP) and a step is
``model.train_step(data, optim_wrapper)``. Inputs are synthetic random
tensors; no dataset is read.

Peak memory of a step = bytes alive before it (parameters, buffers,
gradients, optimiser state, inputs) + the largest amount allocated on top
during it: from ``torch.cuda.max_memory_allocated`` on CUDA and from the
allocation events of ``torch.profiler`` (``profile_memory=True``) on CPU,
which has no allocator statistics.
"""
import copy
import os
import statistics
import sys
import time
from contextlib import contextmanager
from typing import Callable, Dict, Iterable, List, Optional, Sequence

import torch
from torch import Tensor, nn

from wsss_zoo.models.utils.attention import original_code_paths
from .ms_cams import (batched_ms_cams, cams_to_masks, compare_masks,
                      per_image_ms_cams)

AMP_DTYPES = {'off': None, 'fp16': torch.float16, 'bf16': torch.bfloat16}


# ----------------------------------------------------------------------
# synthetic inputs
def random_img_labels(batch_size: int, num_classes: int,
                      generator: torch.Generator) -> Tensor:
    """(B, C) multi-hot image labels, at least one class per image."""
    labels = (torch.rand(batch_size, num_classes, generator=generator)
              < 0.3).float()
    first = torch.randint(num_classes, (batch_size, ), generator=generator)
    labels[torch.arange(batch_size), first] = 1.0
    return labels


def synthetic_batch(batch_size: int,
                    shape: Sequence[int],
                    num_classes: int,
                    device,
                    image_labels: bool,
                    seed: int = 0) -> dict:
    """A data batch as a dataloader would give it to ``model.train_step``.

    Args:
        batch_size (int): B.
        shape (Sequence[int]): (H, W).
        num_classes (int): C (foreground classes for image labels).
        device: where the tensors live (the preprocessor then copies
            nothing).
        image_labels (bool): True: ``gt_img_label`` (C,) multi-hot, as
            ``PackCAMInputs``; False: ``gt_sem_seg`` (1, H, W) random class
            indices, as ``PackSegInputs``.
        seed (int): random seed.

    Returns:
        dict: ``inputs`` list of (3, H, W) float images in [0, 255] and
        ``data_samples`` list of ``SegDataSample``.
    """
    from mmengine.structures import PixelData

    from mmseg.structures import SegDataSample
    H, W = (int(s) for s in shape)
    g = torch.Generator().manual_seed(seed)
    inputs, samples = [], []
    labels = random_img_labels(batch_size, num_classes, g)
    for i in range(batch_size):
        inputs.append((torch.rand(3, H, W, generator=g) * 255).to(device))
        sample = SegDataSample(
            metainfo=dict(img_shape=(H, W), ori_shape=(H, W),
                          pad_shape=(H, W), scale_factor=(1.0, 1.0),
                          flip=False))
        if image_labels:
            sample.set_field(labels[i].to(device), 'gt_img_label')
        else:
            seg = torch.randint(num_classes, (1, H, W), generator=g)
            sample.gt_sem_seg = PixelData(data=seg.to(device))
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


# ----------------------------------------------------------------------
# memory, parameters, time
def _sync(device):
    if torch.device(device).type == 'cuda':
        torch.cuda.synchronize(device)


def live_bytes(modules: Iterable[nn.Module] = (),
               optimizers: Iterable = (),
               tensors: Iterable[Tensor] = ()) -> int:
    """Bytes of the distinct storages held by modules (parameters, their
    gradients, buffers), optimisers (state) and loose tensors."""
    seen, total = set(), 0

    def add(t):
        nonlocal total
        if not isinstance(t, Tensor):
            return
        storage = t.untyped_storage()
        key = (str(t.device), storage.data_ptr())
        if key not in seen and storage.nbytes():
            seen.add(key)
            total += storage.nbytes()

    for m in modules:
        for p in m.parameters():
            add(p)
            add(p.grad)
        for b in m.buffers():
            add(b)
    for opt in optimizers:
        opt = getattr(opt, 'optimizer', opt)  # optim wrapper -> optimizer
        for state in opt.state.values():
            for v in state.values():
                add(v)
    for t in tensors:
        add(t)
    return total


@contextmanager
def _quiet_stderr():
    """Silence file descriptor 2 (C++ log lines) inside the block."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, 'w') as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _cpu_alloc_peak(prof) -> int:
    """Largest running sum of allocations - frees in a CPU profile."""
    from torch._C._profiler import _EventType
    events, stack = [], list(
        prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        e = stack.pop()
        stack.extend(e.children)
        if e.tag == _EventType.Allocation:
            events.append((e.start_time_ns, e.extra_fields.alloc_size))
    current = peak = 0
    for _, size in sorted(events):
        current += size
        peak = max(peak, current)
    return peak


def transient_peak_bytes(fn: Callable[[], object], device) -> int:
    """Largest amount of memory ``fn()`` allocates on top of what is alive
    when it starts (CUDA allocator statistics / CPU profiler events)."""
    if torch.device(device).type == 'cuda':
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        _sync(device)
        return torch.cuda.max_memory_allocated(device) - before
    from torch.profiler import ProfilerActivity, profile
    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    # kineto / the CPU allocator print log lines on fd 2; fn already ran
    # (warm-up) outside this block, so its own warnings have been shown
    with _quiet_stderr():
        prof.start()
        try:
            fn()
        finally:
            prof.stop()
    return _cpu_alloc_peak(prof)


def count_params(module: Optional[nn.Module]) -> Optional[int]:
    return None if module is None else sum(
        p.numel() for p in module.parameters())


def time_interleaved(fns: Dict[str, Callable[[], object]], device,
                     warmup: int, iters: int,
                     repeat: int) -> Dict[str, List[float]]:
    """Seconds per call of each function, ``repeat`` times.

    Every function is first called ``warmup`` times; then each repeat times
    ``iters`` calls of every function in turn, so slow phases of a shared
    machine hit all of them alike.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    _sync(device)
    times = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            _sync(device)
            start = time.perf_counter()
            for _ in range(iters):
                fn()
            _sync(device)
            times[name].append((time.perf_counter() - start) / iters)
    return times


def _ratio(a, b):
    return None if a is None or b is None or not b else a / b


def compare_row(name: str, batch_size: int, times: Dict[str, List[float]],
                mem: Dict[str, Optional[int]], **extra) -> dict:
    """One result row: images/s (median over repeats), peak MiB, ratios."""

    def ips(key):
        if key not in times:
            return None
        return statistics.median(batch_size / t for t in times[key])

    def mib(key):
        value = mem.get(key)
        return None if value is None else value / 2**20

    row = dict(
        task=name,
        images_per_s=ips('fast'),
        baseline_images_per_s=ips('baseline'),
        peak_mem_mb=mib('fast'),
        baseline_peak_mem_mb=mib('baseline'),
        sec_per_iter=times.get('fast'),
        baseline_sec_per_iter=times.get('baseline'))
    row['speedup'] = _ratio(row['images_per_s'],
                            row['baseline_images_per_s'])
    row['mem_ratio'] = _ratio(row['peak_mem_mb'], row['baseline_peak_mem_mb'])
    row.update(extra)
    return row


# ----------------------------------------------------------------------
# configs
def segmenter_baseline_cfg(model_cfg) -> dict:
    """mmseg ``SegmenterMaskTransformerHead`` config matching a DEPICTHead.

    Same input / embed dims, the same number of (self-attention) layers as
    DEPICT's ``num_layers``, the backbone's number of heads (mmseg's
    Segmenter configs use the ViT's; DEPICT's 100-d subspace heads do not
    divide D), mmseg's Segmenter-config values otherwise (dropout_ratio 0,
    MLP ratio 4, drop-path 0.1), the same loss and class count.
    """
    head = model_cfg['decode_head']
    embed_dims = head['embed_dims']
    num_heads = model_cfg['backbone'].get('num_heads', head['num_heads'])
    if embed_dims % num_heads:
        num_heads = head['num_heads']
    keep = ('num_classes', 'in_index', 'ignore_index', 'align_corners',
            'loss_decode', 'norm_cfg', 'threshold')
    cfg = dict(
        type='SegmenterMaskTransformerHead',
        in_channels=head['in_channels'],
        channels=head.get('channels', embed_dims),
        embed_dims=embed_dims,
        num_layers=head['num_layers'],
        num_heads=num_heads,
        dropout_ratio=0.0)
    cfg.update({k: copy.deepcopy(head[k]) for k in keep if k in head})
    return cfg


def optim_wrapper_cfg(cfg_optim_wrapper, amp: str) -> dict:
    """The config's optim wrapper, switched to ``AmpOptimWrapper`` for AMP
    (``dtype`` float16 / bfloat16, dynamic loss scale) or to a plain
    ``OptimWrapper`` for ``amp='off'``."""
    ow = copy.deepcopy(dict(cfg_optim_wrapper))
    if amp == 'off':
        if ow.get('type') == 'AmpOptimWrapper':
            ow['type'] = 'OptimWrapper'
            for key in ('dtype', 'loss_scale', 'use_fsdp'):
                ow.pop(key, None)
        return ow
    ow['type'] = 'AmpOptimWrapper'
    ow['dtype'] = 'float16' if amp == 'fp16' else 'bfloat16'
    ow.setdefault('loss_scale', 'dynamic')
    return ow


@contextmanager
def autocast_ctx(device, amp: str):
    """mmengine's autocast for ``amp`` in {'fp16', 'bf16'}; no-op for off."""
    if amp == 'off':
        yield
        return
    from mmengine.runner.amp import autocast
    with autocast(device_type=torch.device(device).type,
                  dtype=AMP_DTYPES[amp]):
        yield


def maybe_compile(fn, enabled: bool):
    """``torch.compile`` a bound method, as mmengine's Runner does for
    ``train_step`` / ``test_step`` with ``compile=True``."""
    return torch.compile(fn) if enabled else fn


# ----------------------------------------------------------------------
# tasks
def bench_train(model, optim_wrapper, data, device, warmup, iters, repeat,
                baseline=None, baseline_model=None,
                baseline_optim_wrapper=None, baseline_data=None,
                compile_steps=False) -> dict:
    """Training images/s and peak memory: forward + loss + backward + step.

    Args:
        model, optim_wrapper, data: the fast path.
        baseline (str | None): 'materialized' (same model inside
            :func:`original_code_paths`), 'model' (another model with
            its own optim wrapper and data) or None.
    """
    model.train()
    step = maybe_compile(model.train_step, compile_steps)
    fns = {'fast': lambda: step(data, optim_wrapper)}
    static = {'fast': lambda: live_bytes([model], [optim_wrapper],
                                         data['inputs'])}
    if baseline == 'materialized':

        def base_step():
            with original_code_paths(model):
                return step(data, optim_wrapper)

        fns['baseline'] = base_step
        static['baseline'] = static['fast']
    elif baseline == 'model':
        baseline_model.train()
        bstep = maybe_compile(baseline_model.train_step, compile_steps)
        fns['baseline'] = lambda: bstep(baseline_data, baseline_optim_wrapper)
        static['baseline'] = lambda: live_bytes(
            [baseline_model], [baseline_optim_wrapper],
            baseline_data['inputs'])
    times = time_interleaved(fns, device, warmup, iters, repeat)
    mem = {k: static[k]() + transient_peak_bytes(fn, device)
           for k, fn in fns.items()}
    B = len(data['inputs'])
    return compare_row('train', B, times, mem)


def bench_infer(model, data, device, warmup, iters, repeat, amp='off',
                baseline_model=None, baseline_data=None,
                compile_steps=False) -> dict:
    """Inference images/s (``model.test_step``: preprocessing + predict)."""
    fns = {}
    for key, m, d in (('fast', model, data),
                      ('baseline', baseline_model, baseline_data)):
        if m is None:
            continue
        m.eval()
        step = maybe_compile(m.test_step, compile_steps)

        def run(step=step, d=d):
            with torch.no_grad(), autocast_ctx(device, amp):
                return step(d)

        fns[key] = run
    times = time_interleaved(fns, device, warmup, iters, repeat)
    mem = {
        k: live_bytes([m], (), d['inputs']) + transient_peak_bytes(
            fns[k], device)
        for k, m, d in (('fast', model, data),
                        ('baseline', baseline_model, baseline_data))
        if k in fns
    }
    return compare_row('infer', len(data['inputs']), times, mem)


def bench_cam(model, images: Tensor, labels: Tensor, scales, flip: bool,
              device, warmup, iters, repeat, amp='off',
              compile_steps=False,
              max_images_per_pass: Optional[int] = None) -> dict:
    """Multi-scale + flip CAM images/s: batched vs per-image materialised.

    The fast path runs :func:`batched_ms_cams` with ``max_images_per_pass``
    (None: all views of a scale in one pass).

    Also checks that both give identical masks (same normalisation and
    background threshold ``model.test_cfg['bg_thresh']``) and, where they do
    not, whether every differing pixel is a float-rounding tie
    (:func:`compare_masks`; score gap 1e-2, 5e-2 under AMP).
    """
    model.eval()
    bg_thresh = float(model.test_cfg.get('bg_thresh', 0.4))
    if compile_steps:
        model.raw_cams = torch.compile(model.raw_cams)
    out = {}

    def fast():
        with torch.no_grad(), autocast_ctx(device, amp):
            out['fast'] = cams_to_masks(
                batched_ms_cams(model, images, scales, flip, labels,
                                max_images_per_pass), labels, bg_thresh)

    def baseline():
        with torch.no_grad(), autocast_ctx(device, amp), \
                original_code_paths(model):
            out['baseline'] = cams_to_masks(
                per_image_ms_cams(model, images, scales, flip, labels),
                labels, bg_thresh)

    fns = dict(fast=fast, baseline=baseline)
    times = time_interleaved(fns, device, warmup, iters, repeat)
    static = live_bytes([model], (), [images, labels])
    mem = {k: static + transient_peak_bytes(fn, device)
           for k, fn in fns.items()}
    check = compare_masks(*out['fast'], *out['baseline'], bg_thresh,
                          tie_tol=1e-2 if amp == 'off' else 5e-2)
    return compare_row(
        'cam', images.shape[0], times, mem,
        scales=[float(s) for s in scales],
        flip=bool(flip),
        views_per_image=len(scales) * (2 if flip else 1),
        max_images_per_pass=max_images_per_pass,
        masks_identical=check['identical'],
        mask_mismatch_pixels=check['mismatch_pixels'],
        mask_pixels=check['pixels'],
        mask_mismatch_at_ties_only=check['mismatch_at_ties_only'],
        tie_tol=check['tie_tol'],
        max_abs_norm_cam_diff=check['max_abs_norm_cam_diff'])


def bench_head(head, baseline_head, feats, data_samples, optim_wrapper,
               baseline_optim_wrapper, parse_losses, device, warmup, iters,
               repeat, amp='off', compile_steps=False) -> List[dict]:
    """Decode head alone on fixed backbone features: training step
    (forward + loss + backward + optim step through the optim wrapper, as
    ``BaseModel.train_step``; ``parse_losses`` is the segmentor's) and
    inference (forward + upsampling to the input size)."""
    metas = [s.metainfo for s in data_samples]
    train_fns, infer_fns, statics = {}, {}, {}
    for key, h, ow in (('fast', head, optim_wrapper),
                       ('baseline', baseline_head, baseline_optim_wrapper)):
        if h is None:
            continue
        if compile_steps:
            h.forward = torch.compile(h.forward)

        def train(h=h, ow=ow):
            h.train()
            with ow.optim_context(h):
                losses = h.loss(feats, data_samples, {})
            loss, _ = parse_losses(losses)
            ow.update_params(loss)

        def infer(h=h):
            h.eval()
            with torch.no_grad(), autocast_ctx(device, amp):
                return h.predict(feats, metas, {})

        train_fns[key], infer_fns[key] = train, infer
        statics[key] = (h, ow)
    rows = []
    for name, fns in (('head_train', train_fns), ('head_infer', infer_fns)):
        times = time_interleaved(fns, device, warmup, iters, repeat)
        mem = {}
        for k, fn in fns.items():
            h, ow = statics[k]
            opts = [ow] if name == 'head_train' else []
            mem[k] = live_bytes([h], opts, feats) + transient_peak_bytes(
                fn, device)
        rows.append(compare_row(name, len(data_samples), times, mem))
    return rows


__all__ = [
    'AMP_DTYPES', 'synthetic_batch', 'random_img_labels', 'live_bytes',
    'transient_peak_bytes', 'count_params', 'time_interleaved',
    'compare_row', 'segmenter_baseline_cfg', 'optim_wrapper_cfg',
    'autocast_ctx', 'maybe_compile', 'bench_train', 'bench_infer',
    'bench_cam', 'bench_head', 'batched_ms_cams', 'per_image_ms_cams'
]
