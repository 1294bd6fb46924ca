"""Parity of MCTformer V1 / V2 / MCTformer+ with the original code.

Fixtures (``shared/golden/mctformer_{v1,v2,plus}/case_*.pt``) were made by
running xulianuwa/MCTformer (``models.py``, ``engine.train_one_epoch``,
``datasets.VOC12DatasetMS``, ``engine.generate_attention_maps_ms``) on small
seeded weights. Every model is built from the fixture's ``constructor``
kwargs, loaded through :func:`convert_mctformer` with a strict
``load_state_dict``, and every tensor of ``outputs`` is compared with the
fixture's tolerance (``max|ours - golden| <= rtol * max|golden|``, with
``per_tensor_overrides``). Each test checks all tensors of its group and
reports every failing key at once.
"""
import re

import pytest
import torch
import torch.nn as nn

from golden_utils import golden_params, load_case, rel_err
from mmseg.registry import MODELS
from wsss_zoo.converters.mctformer import (convert_mctformer,
                                           mctformer_model_cfg)
from wsss_zoo.models.heads.mct_head import contrastive_class_token_loss
from wsss_zoo.models.refiners.patch_affinity import PatchAffinityRefiner
from wsss_zoo.models.utils.cam import aggregate_views, normalize_cams
from wsss_zoo.models.utils.pos_embed import (mct_patch_pos_embed,
                                             mct_plus_patch_pos_embed,
                                             resize_pos_embed_bicubic)

VERSION_OF = dict(MCTformerV1='v1', MCTformerV2='v2', MCTformerPlus='plus')
ALL_CASES = (golden_params('mctformer_v1') + golden_params('mctformer_v2') +
             golden_params('mctformer_plus'))
# The original V1 forward_features keeps the attention of the last 12 blocks
# only (its default n=12); V2 and MCTformer+ keep every block.
V1_KEPT_LAYERS = 12


class Checker:
    """Collects relative errors of one group; fails once, naming every key."""

    def __init__(self, case):
        tol = case['tolerance']
        self.rtol = tol['rtol_vs_tensor_max']
        self.overrides = tol.get('per_tensor_overrides', {})
        self.results = {}

    def __call__(self, key, ours, golden):
        err = rel_err(ours, golden)
        self.results[key] = (err, self.overrides.get(key, self.rtol))

    def assert_all(self, expected_keys):
        not_checked = sorted(set(expected_keys) - set(self.results))
        assert not not_checked, f'golden tensors not compared: {not_checked}'
        bad = {k: v for k, v in self.results.items() if v[0] > v[1]}
        for k, (err, rtol) in sorted(self.results.items()):
            print(f'{k}: rel err {err:.3e} (rtol {rtol:.1e})')
        assert not bad, 'relative error above tolerance: ' + ', '.join(
            f'{k} {e:.3e} > {r:.1e}' for k, (e, r) in sorted(bad.items()))


def _flat_keys(tree, prefix):
    """Dotted names of every tensor in a nested dict / list."""
    if isinstance(tree, torch.Tensor):
        return [prefix]
    if isinstance(tree, dict):
        return [k for name, sub in tree.items()
                for k in _flat_keys(sub, f'{prefix}.{name}')]
    if isinstance(tree, (list, tuple)):
        return [k for i, sub in enumerate(tree)
                for k in _flat_keys(sub, f'{prefix}[{i}]')]
    return []


def _norm_eps(kwargs):
    match = re.search(r'eps=([0-9.eE+-]+)', str(kwargs.get('norm_layer', '')))
    return float(match.group(1)) if match else 1e-5


def build_port(case, cam_mode=None, cam_layers=None, head_kwargs=None):
    """Backbone + head from the fixture, weights via the strict converter.

    Returns:
        tuple: (nn.ModuleDict with ``backbone`` / ``cam_head``, version).
    """
    cons = case['constructor']
    kw = cons['kwargs']
    version = VERSION_OF[cons['class']]
    converted = convert_mctformer(
        case['state_dict'], num_heads=kw['num_heads'])
    meta = converted['meta']
    assert meta['version'] == version
    img_size = kw['input_size'] if version == 'plus' else kw['img_size']
    expect = dict(embed_dims=kw['embed_dim'], num_layers=kw['depth'],
                  num_classes=kw['num_classes'], img_size=img_size,
                  patch_size=kw['patch_size'], mlp_ratio=kw['mlp_ratio'],
                  qkv_bias=kw['qkv_bias'])
    assert {k: meta[k] for k in expect} == expect
    cfg = mctformer_model_cfg(meta)
    cfg['backbone'].update(
        drop_rate=kw['drop_rate'], attn_drop_rate=kw['attn_drop_rate'],
        drop_path_rate=kw['drop_path_rate'], norm_eps=_norm_eps(kw))
    if version == 'plus':
        cfg['cam_head']['decay_parameter'] = kw['decay_parameter']
    cfg['cam_head'].update(cam_mode=cam_mode, cam_layers=cam_layers,
                           **(head_kwargs or {}))
    model = nn.ModuleDict(
        dict(backbone=MODELS.build(cfg['backbone']),
             cam_head=MODELS.build(cfg['cam_head'])))
    model.load_state_dict(converted['state_dict'], strict=True)
    return model, version


def _patch_attn_layers(version, num_layers):
    kept = V1_KEPT_LAYERS if version == 'v1' else num_layers
    return list(range(max(0, num_layers - kept), num_layers))


@pytest.mark.parametrize('path', ALL_CASES)
def test_mct_parity_train(path):
    case = load_case(path)
    inputs, golden = case['inputs']['train'], case['outputs']['train']
    head_kwargs = None
    if VERSION_OF[case['constructor']['class']] == 'plus':
        head_kwargs = dict(num_cct=int(inputs['num_cct']),
                           loss_weights=dict(cct=float(inputs['loss_weight'])))
    model, version = build_port(case, head_kwargs=head_kwargs)
    model.train()
    x = inputs['x'].clone().requires_grad_(True)
    label = inputs['label']
    feats = model.backbone(x)
    assert feats['attn'] == {}
    logits = model.cam_head.train_logits(feats)
    losses = model.cam_head.loss(feats, label)
    loss = sum(losses.values())
    loss.backward()

    check = Checker(case)
    check('train.cls_logits', logits['cls_logits'], golden['cls_logits'])
    if 'patch_logits' in golden:
        check('train.patch_logits', logits['patch_logits'],
              golden['patch_logits'])
    if 'class_tokens_per_block' in golden:
        check('train.class_tokens_per_block', feats['cls_tokens_per_block'],
              golden['class_tokens_per_block'])
    check('train.loss', loss, golden['loss'])
    terms = dict(cls_loss=losses['loss_cls'], mct_loss=losses['loss_cls'],
                 pat_loss=losses.get('loss_patch'))
    if version == 'plus':
        terms['attn_loss'] = contrastive_class_token_loss(
            feats['cls_tokens_per_block'][-int(inputs['num_cct']):], label)
    for name, golden_term in golden['loss_terms'].items():
        check(f'train.loss_terms.{name}', terms[name], golden_term)
    check('train.grad_x', x.grad, golden['grad_x'])
    check.assert_all(_flat_keys(golden, 'train'))


def _cam_modes(case, version):
    return ['mct'] if version == 'v1' else list(
        case['inputs']['cam']['attention_types'])


@pytest.mark.parametrize('path', ALL_CASES)
def test_mct_parity_cam(path):
    case = load_case(path)
    version = VERSION_OF[case['constructor']['class']]
    n_layers = int(case['inputs']['cam']['n_layers'])
    heads = {}
    for mode in _cam_modes(case, version):
        heads[mode], _ = build_port(case, cam_mode=mode, cam_layers=n_layers)
        heads[mode].eval()
    model = next(iter(heads.values()))
    backbone = model.backbone
    L, C = backbone.num_layers, backbone.num_classes
    pa_layers = _patch_attn_layers(version, L)

    check = Checker(case)
    with torch.no_grad():
        for name, x in case['inputs']['cam']['images'].items():
            golden = case['outputs']['cam'][name]
            need = set(pa_layers)
            for m in heads.values():
                need.update(m.cam_head.cam_attn_layers(L))
            feats = backbone(x, capture_layers=sorted(need))
            assert sorted(feats['attn']) == sorted(need)
            patch_attn = torch.stack(
                [feats['attn'][i].mean(dim=1)[:, C:, C:] for i in pa_layers])
            check(f'cam.{name}.patch_attn', patch_attn, golden['patch_attn'])
            for mode, m in heads.items():
                out = m.cam_head.predict_cams(feats)
                if version == 'v1':
                    check(f'cam.{name}.mtatt', out['cams'].flatten(2),
                          golden['mtatt'])
                else:
                    check(f'cam.{name}.cams_{mode}', out['cams'],
                          golden[f'cams_{mode}'])
                check(f'cam.{name}.logits', out['logits'], golden['logits'])
            # plain forward in eval mode: no capture, fused attention
            plain = backbone(x)
            assert plain['attn'] == {}
            logits = model.cam_head.train_logits(plain)
            if version == 'v1':
                check(f'cam.{name}.forward_logits', logits['cls_logits'],
                      golden['forward_logits'])
            else:
                check(f'cam.{name}.forward_cls_logits', logits['cls_logits'],
                      golden['forward_cls_logits'])
                check(f'cam.{name}.forward_patch_logits',
                      logits['patch_logits'], golden['forward_patch_logits'])
            if 'forward_class_tokens_per_block' in golden:
                check(f'cam.{name}.forward_class_tokens_per_block',
                      plain['cls_tokens_per_block'],
                      golden['forward_class_tokens_per_block'])
    check.assert_all(_flat_keys(case['outputs']['cam'], 'cam'))


@pytest.mark.parametrize('path', ALL_CASES)
def test_mct_parity_gen(path):
    """Multi-scale + flip CAM generation from the recorded views on."""
    case = load_case(path)
    version = VERSION_OF[case['constructor']['class']]
    gen = case['inputs']['gen']
    golden = case['outputs']['gen']
    model, _ = build_port(
        case, cam_mode=None if version == 'v1' else gen['attention_type'],
        cam_layers=int(gen['layer_index']))
    model.eval()
    backbone, head = model.backbone, model.cam_head
    L, C = backbone.num_layers, backbone.num_classes
    refiner = PatchAffinityRefiner(
        layers=_patch_attn_layers(version, L) if version == 'v1' else None)
    assert gen['patch_attn_refine']
    capture = sorted(set(head.cam_attn_layers(L)) | set(
        refiner.attn_layers(L)))

    check = Checker(case)
    refined_views = []
    with torch.no_grad():
        for i, view in enumerate(gen['views']):
            feats = backbone(view, capture_layers=capture)
            out = head.predict_cams(feats)
            refined = refiner(out['cams'], feats)
            refined_views.append(refined)
            ref = golden['views'][i]
            check(f'gen.views[{i}].logits', out['logits'], ref['logits'])
            check(f'gen.views[{i}].cams', out['cams'], ref['cams'])
            check(f'gen.views[{i}].patch_attn_sum',
                  refiner.patch_affinity(feats, C), ref['patch_attn_sum'])
            check(f'gen.views[{i}].refined_cams', refined,
                  ref['refined_cams'])
    label = gen['label'][None]  # (1, C)
    size = tuple(gen['views'][0].shape[-2:])
    flipped = [i % 2 == 1 for i in range(len(refined_views))]
    sum_cam = aggregate_views(refined_views, flipped, size, labels=label)
    norm_cam = normalize_cams(sum_cam, labels=label)
    check('gen.sum_cam', sum_cam[0], golden['sum_cam'])
    check('gen.norm_cam', norm_cam[0], golden['norm_cam'])
    assert torch.nonzero(gen['label']).flatten().tolist() == list(
        golden['cam_classes'])
    check.assert_all(_flat_keys(golden, 'gen'))


@pytest.mark.parametrize('path', ALL_CASES)
def test_mct_parity_pos_embed_rule(path):
    """The named pos-embed helpers reproduce the original's recorded
    distance to a size-based bicubic resize (checks.pos_embed_...)."""
    case = load_case(path)
    version = VERSION_OF[case['constructor']['class']]
    sd = case['state_dict']
    C = sd['cls_token'].shape[1]
    patch = case['constructor']['kwargs'].get('patch_size', 16)
    checks = case['checks']
    recorded = checks['pos_embed_official_vs_size_based_bicubic_max_abs']
    for name, x in case['inputs']['cam']['images'].items():
        H, W = x.shape[-2:]
        grid = (H // patch, W // patch)
        if version == 'plus':
            ours = mct_plus_patch_pos_embed(sd['pos_embed_pat'], grid,
                                            training=False)
            ref = resize_pos_embed_bicubic(sd['pos_embed_pat'], grid)
        else:
            ours = mct_patch_pos_embed(sd['pos_embed'][:, C:], (H, W), grid)
            ref = resize_pos_embed_bicubic(sd['pos_embed'][:, C:], grid)
        dist = (ours - ref).abs().max().item()
        assert dist == pytest.approx(recorded[name], abs=1e-6), name
