"""Parity of TS-CAM (DeiTCAM + TSCAMHead + box helpers) with the original.

Fixtures (``shared/golden/tscam/case_*.pt``) were made by running
vasgaowei/TS-CAM (``lib/models/deit.py::TSCAM``,
``tools_cam/train_cam.py::train_one_epoch`` and the ``lib/cams_deit.py``
localisation helpers) on small seeded weights. The model is built from the
fixture's ``constructor`` kwargs, loaded through :func:`convert_tscam` with a
strict ``load_state_dict``, and every tensor of ``outputs`` is compared with
the fixture's tolerance (``max|ours - golden| <= rtol * max|golden|``, with
``per_tensor_overrides``; integer tensors exactly). Each test checks all
tensors of its group and names every failing key at once.
"""
import re

import pytest
import torch
import torch.nn as nn

from golden_utils import golden_params, load_case, rel_err
from mmseg.registry import MODELS
from wsss_zoo.converters.tscam import convert_tscam, tscam_model_cfg
from wsss_zoo.evaluation.box_localization import topk_cam_boxes

CASES = golden_params('tscam')


class Checker:
    """Collects errors of one group; fails once, naming every key."""

    def __init__(self, case):
        tol = case['tolerance']
        self.rtol = tol['rtol_vs_tensor_max']
        self.overrides = tol.get('per_tensor_overrides', {})
        self.results = {}

    def __call__(self, key, ours, golden):
        if not golden.is_floating_point():  # integer tensors: exact
            assert ours.shape == golden.shape, (key, ours.shape, golden.shape)
            err = 0.0 if torch.equal(ours.long(), golden.long()) else float(
                'inf')
            self.results[key] = (err, 0.0)
            return
        err = rel_err(ours, golden)
        self.results[key] = (err, self.overrides.get(key, self.rtol))

    def assert_all(self, expected_keys):
        not_checked = sorted(set(expected_keys) - set(self.results))
        assert not not_checked, f'golden tensors not compared: {not_checked}'
        bad = {k: v for k, v in self.results.items() if v[0] > v[1]}
        for k, (err, rtol) in sorted(self.results.items()):
            print(f'{k}: rel err {err:.3e} (rtol {rtol:.1e})')
        assert not bad, 'error above tolerance: ' + ', '.join(
            f'{k} {e:.3e} > {r:.1e}' for k, (e, r) in sorted(bad.items()))


def _keys(tree, prefix):
    return [f'{prefix}.{k}' for k, v in tree.items()
            if isinstance(v, torch.Tensor)]


def _norm_eps(kwargs):
    match = re.search(r'eps=([0-9.eE+-]+)', str(kwargs.get('norm_layer', '')))
    return float(match.group(1)) if match else 1e-5


def build_port(case):
    """DeiTCAM + TSCAMHead from the fixture, weights via the converter."""
    kw = case['constructor']['kwargs']
    assert case['constructor']['class'] == 'TSCAM'
    converted = convert_tscam(case['state_dict'], num_heads=kw['num_heads'])
    meta = converted['meta']
    expect = dict(embed_dims=kw['embed_dim'], num_layers=kw['depth'],
                  num_classes=kw['num_classes'], img_size=kw['img_size'],
                  patch_size=kw['patch_size'], mlp_ratio=kw['mlp_ratio'],
                  qkv_bias=kw['qkv_bias'])
    assert {k: meta[k] for k in expect} == expect
    cfg = tscam_model_cfg(meta)
    cfg['backbone'].update(
        drop_rate=kw['drop_rate'], attn_drop_rate=kw['attn_drop_rate'],
        drop_path_rate=kw['drop_path_rate'], norm_eps=_norm_eps(kw))
    model = nn.ModuleDict(
        dict(backbone=MODELS.build(cfg['backbone']),
             cam_head=MODELS.build(cfg['cam_head'])))
    model.load_state_dict(converted['state_dict'], strict=True)
    return model


@pytest.mark.parametrize('path', CASES)
def test_tscam_parity_train(path):
    """One train_one_epoch step: logits, CE loss and d loss / d x."""
    case = load_case(path)
    inputs, golden = case['inputs']['train'], case['outputs']['train']
    model = build_port(case)
    model.train()
    x = inputs['x'].clone().requires_grad_(True)
    feats = model.backbone(x)
    assert feats['attn'] == {}  # training never builds attention maps
    logits = model.cam_head.train_logits(feats)['logits']
    loss = model.cam_head.loss(feats, inputs['target'])['loss_cls']
    loss.backward()
    check = Checker(case)
    check('train.logits', logits, golden['logits'])
    check('train.loss', loss, golden['loss'])
    check('train.grad_x', x.grad, golden['grad_x'])
    # the same loss from (B, C) one-hot labels, as CAMSegmentor passes them
    one_hot = torch.zeros_like(logits).scatter_(1, inputs['target'][:, None],
                                                1.)
    loss_1h = model.cam_head.loss(feats, one_hot)['loss_cls']
    check('train.loss[one_hot]', loss_1h, golden['loss'])
    check.assert_all(_keys(golden, 'train'))


def _cam_outputs(model, x):
    backbone, head = model.backbone, model.cam_head
    with torch.no_grad():
        feats = backbone(
            x, capture_layers=head.cam_attn_layers(backbone.num_layers))
        return head.predict_cams(feats)


@pytest.mark.parametrize('path', CASES)
def test_tscam_parity_cam(path):
    """Eval mode: logits and CAMs (attention of ALL layers x maps)."""
    case = load_case(path)
    golden = case['outputs']['cam']
    model = build_port(case)
    model.eval()
    L = model.backbone.num_layers
    assert model.cam_head.cam_attn_layers(L) == list(range(L))
    out = _cam_outputs(model, case['inputs']['cam']['x'])
    check = Checker(case)
    check('cam.logits', out['logits'], golden['logits'])
    check('cam.cams', out['cams'], golden['cams'])
    # a plain eval forward (fused, nothing captured) gives the same logits
    with torch.no_grad():
        plain = model.backbone(case['inputs']['cam']['x'])
        assert plain['attn'] == {}
        check('cam.logits[plain_forward]',
              model.cam_head.train_logits(plain)['logits'], golden['logits'])
    check.assert_all(_keys(golden, 'cam'))


@pytest.mark.parametrize('path', CASES)
def test_tscam_parity_loc(path):
    """evaluate_cls_loc: top-5 classes, resized maps and boxes, GT boxes."""
    case = load_case(path)
    loc, golden = case['inputs']['loc'], case['outputs']['loc']
    model = build_port(case)
    model.eval()
    out = _cam_outputs(model, case['inputs']['cam']['x'])
    size = (int(loc['crop_size']), ) * 2
    k = max(loc['topk'])
    top_idx = out['logits'].topk(k, dim=1, largest=True, sorted=True).indices
    targets = case['inputs']['train']['target']
    boxes, maps, gt_boxes, gt_maps = [], [], [], []
    for b in range(len(top_idx)):
        bx, mp = topk_cam_boxes(out['cams'][b], top_idx[b].tolist(), size,
                                float(loc['cam_thr']))
        boxes.append(bx)
        maps.append(mp)
        gb, gm = topk_cam_boxes(out['cams'][b], [int(targets[b])], size,
                                float(loc['cam_thr']))
        gt_boxes.append(gb[0, 1:])
        gt_maps.append(gm[0])
    check = Checker(case)
    check('loc.top5_idx', top_idx, golden['top5_idx'])
    check('loc.top5_maps', torch.stack(maps), golden['top5_maps'])
    check('loc.top5_boxes', torch.stack(boxes), golden['top5_boxes'])
    check('loc.gt_maps', torch.stack(gt_maps), golden['gt_maps'])
    check('loc.gt_boxes', torch.stack(gt_boxes), golden['gt_boxes'])
    check.assert_all(_keys(golden, 'loc'))


@pytest.mark.parametrize('path', CASES)
def test_tscam_rejects_other_sizes_like_the_original(path):
    """checks.non_square_input: the original refuses any other input size;
    so does the default DeiTCAM (pos_embed_resize=None)."""
    case = load_case(path)
    assert 'match' in case['checks']['non_square_input']
    model = build_port(case)
    x = case['inputs']['cam']['x']
    H, W = x.shape[-2:]
    bigger = torch.zeros(1, 3, H, W + model.backbone.patch_size)
    with pytest.raises(ValueError, match='pos_embed_resize'):
        model.backbone(bigger)
