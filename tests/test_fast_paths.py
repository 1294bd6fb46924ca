"""The fast paths compute what the baseline (original-code) paths compute.

* Training: fused attention (no map built where the loss does not need it)
  and MLPs that recompute their GELU output in backward vs. attention
  materialised in every layer and MLPs that keep it (``original_code_paths``,
  what the original research code does): same losses and parameter
  gradients. Run for every stage-1 (``CAMSegmentor``) SynthShapes config in
  ``configs/`` (MCTformer V1 / V2 / + and any stage-1 method ported later),
  so a new method is covered as soon as it ships its tiny config.
* CAMs: multi-scale + flip views of a batch in one pass per scale
  (``batched_ms_cams``) vs. the original per-image, per-view loop with
  materialised attention (``per_image_ms_cams``): same CAMs and masks.
* ``DEPICTHead``: fused vs. explicit subspace attention: same masks, loss
  and gradients.

Tiny models, CPU, float32, non-square inputs.
"""
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from golden_utils import REPO_ROOT, rel_err
from mmengine.config import Config
from mmengine.logging import MMLogger
from mmengine.registry import init_default_scope
from mmengine.structures import PixelData
from timm.models.vision_transformer import Block

from mmseg.registry import MODELS
from mmseg.structures import SegDataSample
from wsss_zoo.models.utils.attention import (CaptureAttention,
                                             materialize_all_attention,
                                             original_code_paths)
from wsss_zoo.models.utils.mlp import LeanMlp
from wsss_zoo.utils.benchmark import random_img_labels
from wsss_zoo.utils.ms_cams import (batched_ms_cams, cams_to_masks,
                                    compare_masks, per_image_ms_cams)

# at every CAM scale below a multiple of 16 (Conformer's CNN / token
# coupling) and of the ViTs' patch size 8
H, W, B = 64, 96, 2
SCALES = [1.0, 0.5, 1.5]


def stage1_configs():
    """Every SynthShapes config whose model is a CAMSegmentor."""
    found = []
    for path in sorted(Path(REPO_ROOT, 'configs').glob('*/*synthshapes*.py')):
        if Config.fromfile(str(path)).model.get('type') == 'CAMSegmentor':
            found.append(str(path.relative_to(REPO_ROOT)))
    return found


STAGE1 = stage1_configs()


def test_stage1_configs_found():
    names = ' '.join(STAGE1)
    for method in ('mctformer-v1', 'mctformer-v2'):
        assert method in names, STAGE1


@pytest.fixture
def sdpa_calls(monkeypatch):
    """Count calls of F.scaled_dot_product_attention."""
    calls = [0]
    orig = F.scaled_dot_product_attention

    def sdpa(*args, **kwargs):
        calls[0] += 1
        return orig(*args, **kwargs)

    monkeypatch.setattr(F, 'scaled_dot_product_attention', sdpa)
    return calls


def build_stage1(config, seed=0):
    init_default_scope('mmseg')
    cfg = Config.fromfile(str(Path(REPO_ROOT, config)))
    torch.manual_seed(seed)
    model = MODELS.build(cfg.model)
    # quiet: init_weights logs every parameter at INFO level
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel('WARNING')
    try:
        model.init_weights()
    finally:
        logger.setLevel(level)
    # the fused path really is SDPA here, whatever TIMM_FUSED_ATTN says
    for m in model.modules():
        if isinstance(m, CaptureAttention):
            m.fused_attn = True
    return model


def stage1_batch(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(B, 3, H, W, generator=g)
    labels = random_img_labels(B, model.num_classes, g)
    samples = []
    for i in range(B):
        s = SegDataSample(metainfo=dict(img_shape=(H, W), ori_shape=(H, W)))
        s.set_field(labels[i], 'gt_img_label')
        samples.append(s)
    return images, labels, samples


def train_mode_without_dropout(model):
    """Training mode, but dropout / drop-path off so runs are comparable."""
    model.train()
    for m in model.modules():
        if 'drop' in type(m).__name__.lower():
            m.eval()


def loss_and_grads(model, images, samples):
    model.zero_grad(set_to_none=True)
    loss, log_vars = model.parse_losses(model.loss(images, samples))
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()
             if p.grad is not None}
    return loss.detach(), log_vars, grads


@pytest.mark.parametrize('config', STAGE1)
def test_fused_training_matches_materialized(config, sdpa_calls):
    model = build_stage1(config)
    train_mode_without_dropout(model)
    images, _, samples = stage1_batch(model)
    lean_mlps = [m for m in model.modules() if isinstance(m, LeanMlp)]
    assert lean_mlps and all(m.recompute_act for m in lean_mlps)
    loss_f, logs_f, grads_f = loss_and_grads(model, images, samples)
    fused_calls = sdpa_calls[0]
    with original_code_paths(model) as switched:
        assert not any(m.recompute_act for m in lean_mlps)
        loss_m, logs_m, grads_m = loss_and_grads(model, images, samples)
    assert switched > 0
    assert all(m.recompute_act for m in lean_mlps)
    # the baseline built every map explicitly (no SDPA call) ...
    assert sdpa_calls[0] == fused_calls
    # ... the fast path fused every layer whose map the loss does not need
    loss_layers = getattr(model.cam_head, 'loss_attn_layers', None)
    if not (loss_layers and loss_layers(model._num_layers)):
        assert fused_calls > 0
    assert rel_err(loss_f, loss_m) < 1e-5
    assert logs_f.keys() == logs_m.keys()
    assert grads_f.keys() == grads_m.keys() and len(grads_f) > 0
    # error relative to each gradient, floored at 1e-6 of the largest one
    # (a bias before a BatchNorm has a zero gradient up to rounding)
    scale = max(g.abs().max() for g in grads_m.values())
    for name in grads_f:
        err = (grads_f[name] - grads_m[name]).abs().max()
        tol = 1e-4 * grads_m[name].abs().max() + 1e-6 * scale
        assert err <= tol, f'{config}: grad of {name}: {err:.2e} > {tol:.2e}'
    # the flags are back: the next forward is as fast as before
    before = sdpa_calls[0]
    model.loss(images, samples)
    assert sdpa_calls[0] - before == fused_calls


def record_raw_cams_passes(model):
    """Wrap ``model.raw_cams`` so that every call appends its batch size
    to the returned list."""
    calls = []
    raw_cams = model.raw_cams

    def counting_raw_cams(x):
        calls.append(x.shape[0])
        return raw_cams(x)

    model.raw_cams = counting_raw_cams
    return calls


@pytest.mark.parametrize('config', STAGE1)
def test_batched_ms_cams_match_per_image_loop(config):
    model = build_stage1(config).eval()
    images, labels, _ = stage1_batch(model, seed=1)
    scales = SCALES
    calls = record_raw_cams_passes(model)
    with torch.no_grad():
        fast = batched_ms_cams(model, images, scales, True, labels)
        n_fast = list(calls)
        calls.clear()
        with materialize_all_attention(model):
            base = per_image_ms_cams(model, images, scales, True, labels)
    # one pass per scale with image + flip stacked vs one pass per view
    assert n_fast == [2 * B] * len(scales)
    assert calls == [1] * (B * len(scales) * 2)
    assert fast.shape == base.shape == (B, model.num_classes, H, W)
    assert rel_err(fast, base) < 1e-5
    # absent classes are zero in every view
    assert torch.all(fast[labels == 0] == 0)
    bg = model.test_cfg['bg_thresh']
    norm_f, mask_f = cams_to_masks(fast, labels, bg)
    norm_b, mask_b = cams_to_masks(base, labels, bg)
    check = compare_masks(norm_f, mask_f, norm_b, mask_b, bg)
    # float rounding of batched vs single-image kernels may flip a tie
    assert check['mismatch_at_ties_only'], check
    assert check['mismatch_pixels'] <= 1e-3 * check['pixels'], check
    # the masks hold more than one label: the check is not vacuous
    assert mask_f.unique().numel() > 1


@pytest.mark.parametrize('config', STAGE1[:1])
def test_chunked_passes_give_the_same_cams(config):
    """``max_images_per_pass`` = N takes the batch in chunks of N // 2
    images (their flips in the same pass), each chunk through every scale
    before the next; N = 1 splits image and flip. The CAM sum is the
    one-pass sum."""
    model = build_stage1(config).eval()
    images, labels, _ = stage1_batch(model, seed=3)
    images, labels = torch.cat([images] * 2), torch.cat([labels] * 2)
    n = images.shape[0]  # 4 images
    calls = record_raw_cams_passes(model)
    with torch.no_grad():
        whole = batched_ms_cams(model, images, SCALES, True, labels)
        assert calls == [2 * n] * len(SCALES)
        for limit, passes in ((3, [2] * (n * len(SCALES))),
                              (4, [4] * (n // 2 * len(SCALES))),
                              (6, [6] * len(SCALES) + [2] * len(SCALES)),
                              (1, [1] * (2 * n * len(SCALES)))):
            calls.clear()
            chunked = batched_ms_cams(model, images, SCALES, True, labels,
                                      max_images_per_pass=limit)
            assert calls == passes, limit
            assert rel_err(chunked, whole) < 1e-5, limit
        calls.clear()
        no_flip = batched_ms_cams(model, images, SCALES, False, labels,
                                  max_images_per_pass=3)
        assert calls == [3] * len(SCALES) + [1] * len(SCALES)
        assert rel_err(no_flip, batched_ms_cams(model, images, SCALES,
                                                False, labels)) < 1e-5
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match='max_images_per_pass'):
            batched_ms_cams(model, images, SCALES, True, labels, bad)


def test_compare_masks_tells_ties_from_real_differences():
    g = torch.Generator().manual_seed(0)
    norm = torch.rand(1, 3, 8, 8, generator=g)
    norm[0, :, 0, 0] = torch.tensor([0.9, 0.9 + 5e-5, 0.1])  # a near-tie
    _, mask = cams_to_masks(norm * 1.0, None, 0.4)
    tie = mask.clone()
    tie[0, 0, 0] = 1  # the other side of the tie
    check = compare_masks(norm, tie, norm, mask, 0.4)
    assert not check['identical'] and check['mismatch_pixels'] == 1
    assert check['mismatch_at_ties_only']
    wrong = mask.flip(-1)  # e.g. a flipped view not flipped back
    check = compare_masks(norm, wrong, norm, mask, 0.4)
    assert check['mismatch_pixels'] > 1
    assert not check['mismatch_at_ties_only']
    same = compare_masks(norm, mask, norm, mask, 0.4)
    assert same['identical'] and same['mismatch_pixels'] == 0


@pytest.mark.parametrize('config', STAGE1[:1])
def test_flip_views_are_flipped_back(config):
    """A flipped image's CAM sum is the mirror of the original's."""
    model = build_stage1(config).eval()
    images, labels, _ = stage1_batch(model, seed=2)
    with torch.no_grad():
        cams = batched_ms_cams(model, images, [1.0], True, labels)
        mirrored = batched_ms_cams(model, images.flip(-1), [1.0], True,
                                   labels)
        no_flip = batched_ms_cams(model, images, [1.0], False, labels)
    assert rel_err(mirrored.flip(-1), cams) < 1e-5
    assert rel_err(no_flip, cams) > 1e-3  # the flip view adds something


def test_ms_cams_reject_bad_scales():
    with pytest.raises(ValueError, match='at least one scale'):
        batched_ms_cams(None, torch.zeros(1, 3, 8, 8), [], True)
    with pytest.raises(ValueError, match='> 0'):
        per_image_ms_cams(None, torch.zeros(1, 3, 8, 8), [1.0, 0.0], True)


# ----------------------------------------------------------------------
# materialize_all_attention on other attention modules
def test_materialize_switches_timm_attention_and_restores(sdpa_calls):
    torch.manual_seed(0)
    block = Block(dim=32, num_heads=4).eval()
    block.attn.fused_attn = True
    x = torch.randn(2, 7, 32)
    fused = block(x)
    assert sdpa_calls[0] == 1
    with pytest.raises(RuntimeError, match='boom'):
        with materialize_all_attention(block) as switched:
            assert switched == 1 and block.attn.fused_attn is False
            explicit = block(x)
            raise RuntimeError('boom')
    assert sdpa_calls[0] == 1  # the explicit path did not call SDPA
    assert block.attn.fused_attn is True  # restored after the exception
    assert rel_err(explicit, fused) < 1e-5


def build_depict_head(mode):
    torch.manual_seed(0)
    head = MODELS.build(
        dict(type='DEPICTHead', in_channels=32, embed_dims=32, num_layers=2,
             num_heads=2, num_classes=5, mode=mode, patch_size=8))
    head.init_weights()
    # std-0.02 class embeddings are near-identical and the LayerNorm over
    # classes amplifies rounding noise; std 1 keeps the comparison tight
    torch.nn.init.normal_(head.cls_emb)
    return head


@pytest.mark.parametrize('mode', ['sa', 'ca'])
def test_depict_fused_training_matches_explicit(mode, sdpa_calls):
    head = build_depict_head(mode).train()
    feat = torch.randn(2, 32, 3, 5)  # non-square grid, 24 x 40 pixels
    g = torch.Generator().manual_seed(0)
    samples = [
        SegDataSample(gt_sem_seg=PixelData(
            data=torch.randint(5, (1, 24, 40), generator=g)))
        for _ in range(2)
    ]
    switched = []

    def run(explicit):
        head.zero_grad(set_to_none=True)
        before = sdpa_calls[0]
        with (materialize_all_attention(head) if explicit else
              nullcontext(0)) as n:
            switched.append(n)
            masks = head([feat])
            loss = head.loss([feat], samples, {})['loss_ce']
        loss.backward()
        grads = {n: p.grad.clone() for n, p in head.named_parameters()}
        # scalar step sizes are compared together (sums that may cancel)
        steps = torch.cat(
            [grads.pop(n) for n in list(grads) if 'step_size' in n])
        return masks.detach(), loss.detach(), steps, grads, \
            sdpa_calls[0] - before

    m_f, l_f, s_f, g_f, calls_f = run(explicit=False)
    m_e, l_e, s_e, g_e, calls_e = run(explicit=True)
    n_layers = 2 + (3 if mode == 'ca' else 0)
    assert switched == [0, n_layers]
    assert calls_f == 2 * n_layers and calls_e == 0
    assert rel_err(m_f, m_e) < 1e-5
    assert rel_err(l_f, l_e) < 1e-5
    assert rel_err(s_f, s_e) < 1e-4
    assert g_f.keys() == g_e.keys()
    for name in g_f:
        assert rel_err(g_f[name], g_e[name]) < 1e-4, name
    # flags restored: fused again
    assert all(m.fused_attn for m in head.modules()
               if hasattr(m, 'fused_attn'))


@pytest.mark.parametrize('config,refiner', [
    (c, r) for c in STAGE1 for r in (None, 'PatchAffinityRefiner')
    if r is None or 'mctformer' in c
])
def test_head_mean_capture_gives_the_same_cams(config, refiner,
                                               monkeypatch):
    """CAM consumers that only average heads get (B, 1, N, N) maps kept
    (``keep_head_mean_attention``): the CAMs equal those from full maps."""
    model = build_stage1(config).eval()
    if refiner is not None:  # the VOC setting: refinement over all layers
        model.refiners = torch.nn.ModuleList([MODELS.build(dict(type=refiner))])
    consumers = [model.cam_head, *model.refiners]
    head_mean = model._cam_attn_head_mean_only()
    if not model._cam_capture_layers():
        pytest.skip(f'{config}: CAM mode reads no attention maps')
    x = torch.randn(B, 3, H, W)
    kept = []
    orig_extract = model.extract_feat

    def extract(*args, **kwargs):
        feats = orig_extract(*args, **kwargs)
        kept.extend(a.shape[1] for a in feats['attn'].values())
        return feats

    monkeypatch.setattr(model, 'extract_feat', extract)
    with torch.no_grad():
        fast, logits = model.raw_cams(x)
        heads_fast = list(kept)
        kept.clear()
        for m in consumers:  # force full (B, heads, N, N) maps
            monkeypatch.setattr(m, 'attn_head_mean_only', False,
                                raising=False)
        full, logits_full = model.raw_cams(x)
    assert kept and all(h > 1 for h in kept)
    if head_mean:
        assert heads_fast and all(h == 1 for h in heads_fast), heads_fast
    else:  # e.g. WeakTr's fusion weights every head: full maps kept
        assert heads_fast == kept
    assert rel_err(fast, full) <= 1e-6
    assert torch.equal(logits, logits_full)
