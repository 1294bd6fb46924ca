"""Properties of the TS-CAM components (beyond golden parity).

Converter round trip and key errors, fused training vs materialised
attention, attention captured only for the CAM layers, the CAM formula for a
layer subset, the final norm, positional-embedding rules, ImageNet init,
box helpers, bad-input errors and the CAMSegmentor / config contract.
Tiny models, CPU, float32.
"""
import pickle
import runpy
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.config import Config

from golden_utils import REPO_ROOT, rel_err
from mmseg.registry import MODELS
from wsss_zoo.converters.tscam import convert_tscam, tscam_model_cfg
from wsss_zoo.evaluation.box_localization import (box_iou_inclusive,
                                                  cam_to_box,
                                                  resize_normalize_cam)
from wsss_zoo.models.utils.attention import (CaptureAttention,
                                             materialize_all_attention)
from wsss_zoo.models.utils.pos_embed import resize_pos_embed_bicubic

D, L, HEADS, C, S = 32, 3, 2, 5, 32
SYNTH_CONFIG = 'configs/tscam/tscam_vit-t8_1xb16-2k_synthshapes-96x96.py'
VOC_CONFIG = 'configs/tscam/tscam_deit-s16_1xb128-60e_voc12aug-224x224.py'


def build(seed=0, backbone_kwargs=None, **head_kwargs):
    torch.manual_seed(seed)
    backbone = MODELS.build(
        dict(type='DeiTCAM', img_size=S, patch_size=16, embed_dims=D,
             num_layers=L, num_heads=HEADS, drop_path_rate=0.,
             **(backbone_kwargs or {})))
    backbone.init_weights()
    head = MODELS.build(
        dict(type='TSCAMHead', num_classes=C, in_channels=D, **head_kwargs))
    for blk in backbone.blocks:  # the fused path is SDPA whatever the env
        blk.attn.fused_attn = True
    return nn.ModuleDict(dict(backbone=backbone, cam_head=head))


def multi_hot(B=2):
    y = torch.zeros(B, C)
    y[0, 1] = 1
    y[1, [0, 3]] = 1
    return y


@pytest.fixture
def attn_calls(monkeypatch):
    """Per attention call: (capture flag, map kept); and SDPA call count."""
    calls = dict(attn=[], sdpa=0)
    orig_forward = CaptureAttention.forward
    orig_sdpa = F.scaled_dot_product_attention

    def forward(self, *args, **kwargs):
        out = orig_forward(self, *args, **kwargs)
        calls['attn'].append((self.capture, self.attn_map is not None))
        return out

    def sdpa(*args, **kwargs):
        calls['sdpa'] += 1
        return orig_sdpa(*args, **kwargs)

    monkeypatch.setattr(CaptureAttention, 'forward', forward)
    monkeypatch.setattr(F, 'scaled_dot_product_attention', sdpa)
    return calls


# ----------------------------------------------------------------------
# training: fused, no attention map; equal to the materialised baseline
def _loss_and_grads(model, x, y):
    model.zero_grad(set_to_none=True)
    xi = x.clone().requires_grad_(True)
    loss = model.cam_head.loss(model.backbone(xi), y)['loss_cls']
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()
             if p.grad is not None}
    return loss.detach(), xi.grad, grads


@pytest.mark.parametrize('loss_type,labels', [
    ('multilabel', multi_hot()),
    ('ce', torch.tensor([1, 3])),
])
def test_fused_training_equals_materialized(loss_type, labels, attn_calls):
    model = build(loss_type=loss_type)
    model.train()
    x = torch.randn(2, 3, S, S)
    loss_f, gx_f, g_f = _loss_and_grads(model, x, labels)
    # training: every layer fused, no map captured or kept
    assert attn_calls['attn'] == [(False, False)] * L
    assert attn_calls['sdpa'] == L
    with materialize_all_attention(model) as switched:
        loss_m, gx_m, g_m = _loss_and_grads(model, x, labels)
    assert switched == L
    assert attn_calls['sdpa'] == L  # the baseline built every map
    assert rel_err(loss_f, loss_m) < 1e-6
    assert rel_err(gx_f, gx_m) < 1e-4
    # every parameter is trained, the final norm included (no DDP unused)
    assert g_f.keys() == g_m.keys() == {
        n for n, _ in model.named_parameters()}
    for name in g_f:
        assert rel_err(g_f[name], g_m[name]) < 1e-4, name


def test_final_norm_is_applied_and_trained():
    model = build()
    model.eval()
    x = torch.randn(1, 3, S, S)
    with torch.no_grad():
        feats = model.backbone(x)
        tokens = feats['patch_tokens']
        # LayerNorm with weight 1, bias 0 output: zero mean per token
        assert tokens.mean(dim=-1).abs().max() < 1e-5
        model.backbone.norm.bias.fill_(0.5)
        shifted = model.backbone(x)['patch_tokens']
    assert torch.allclose(shifted, tokens + 0.5, atol=1e-5)
    assert model.backbone.norm.weight.requires_grad
    # MCTformer's encoder (shared code) still never applies its norm
    mct = MODELS.build(dict(type='MCTformerV2', img_size=S, embed_dims=D,
                            num_layers=1, num_heads=HEADS, num_classes=C))
    assert not mct.norm.weight.requires_grad and not mct.apply_final_norm


# ----------------------------------------------------------------------
# CAMs: only the CAM layers are captured; the formula on a subset
@pytest.mark.parametrize('cam_layers,expected', [(None, [0, 1, 2]),
                                                 (2, [1, 2]), (9, [0, 1, 2]),
                                                 ([0, -1], [0, 2])])
def test_cam_layers_are_the_only_captured(cam_layers, expected, attn_calls):
    model = build(cam_layers=cam_layers)
    model.eval()
    layers = model.cam_head.cam_attn_layers(L)
    assert layers == expected
    with torch.no_grad():
        feats = model.backbone(torch.randn(1, 3, S, S),
                               capture_layers=layers)
        out = model.cam_head.predict_cams(feats)
    assert sorted(feats['attn']) == expected
    assert [kept for _, kept in attn_calls['attn']] == [
        i in expected for i in range(L)]
    assert attn_calls['sdpa'] == L - len(expected)
    assert out['cams'].shape == (1, C, 2, 2)


def test_cam_formula_on_a_layer_subset():
    """cams = (sum over the chosen layers of the head-mean class-token row)
    x detached maps; other layers do not contribute."""
    model = build(cam_layers=[1])
    model.eval()
    x = torch.randn(2, 3, S, S)
    with torch.no_grad():
        feats = model.backbone(x, capture_layers=[0, 1, 2])
        out = model.cam_head.predict_cams(feats)
        maps = model.cam_head.semantic_maps(feats)
        row = feats['attn'][1].mean(dim=1)[:, 0, 1:].reshape(2, 1, 2, 2)
        all_layers = build(cam_layers=None).cam_head
        all_layers.load_state_dict(model.cam_head.state_dict())
        out_all = all_layers.predict_cams(feats)
    assert rel_err(out['cams'], row * maps) < 1e-6
    assert rel_err(out['logits'], maps.mean(dim=(2, 3))) < 1e-6
    assert rel_err(out_all['cams'], out['cams']) > 1e-3
    # CAMs are not ReLU'd: negative semantic maps give negative CAMs
    assert (out['cams'] < 0).any()


def test_cam_segmentor_uses_fused_training_and_cam_layers(attn_calls):
    from mmseg.structures import SegDataSample
    model = MODELS.build(dict(
        type='CAMSegmentor',
        backbone=dict(type='DeiTCAM', img_size=S, embed_dims=D,
                      num_layers=L, num_heads=HEADS, drop_path_rate=0.,
                      pos_embed_resize='bicubic'),
        cam_head=dict(type='TSCAMHead', num_classes=C, in_channels=D,
                      cam_layers=2, loss_type='multilabel')))
    model.init_weights()
    for blk in model.backbone.blocks:
        blk.attn.fused_attn = True
    H, W = 48, 80  # non-square, not the training size
    samples = []
    for y in multi_hot():
        s = SegDataSample()
        s.set_field(y, 'gt_img_label')
        s.set_metainfo(dict(ori_shape=(H, W), img_shape=(H, W)))
        samples.append(s)
    x = torch.randn(2, 3, H, W)
    losses = model.loss(x, samples)
    assert set(losses) == {'loss_cls'}
    assert attn_calls['attn'] == [(False, False)] * L
    attn_calls['attn'].clear()
    model.eval()
    with torch.no_grad():
        out = model.predict(x, samples)
    assert [kept for _, kept in attn_calls['attn']] == [False, True, True]
    assert out[0].pred_sem_seg.data.shape == (1, H, W)
    assert out[0].seg_logits.data.shape == (C + 1, H, W)


# ----------------------------------------------------------------------
# positional embeddings
def test_pos_embed_default_refuses_other_sizes_like_the_original():
    model = build()
    with pytest.raises(ValueError, match="pos_embed_resize='bicubic'"):
        model.backbone(torch.randn(1, 3, S, S + 16))
    with pytest.raises(ValueError, match='does not match img_size'):
        model.backbone(torch.randn(1, 3, S + 8, S + 8))  # same 2x2 grid
    with pytest.raises(ValueError, match='smaller than one patch'):
        model.backbone(torch.randn(1, 3, 8, S))


def test_pos_embed_bicubic_extension():
    strict = build(seed=4)
    model = build(seed=4, backbone_kwargs=dict(pos_embed_resize='bicubic'))
    model.load_state_dict(strict.state_dict())
    model.eval(), strict.eval()
    x = torch.randn(1, 3, S, S)
    with torch.no_grad():
        # the stored grid is used unchanged: identical to the original
        assert torch.equal(model.backbone(x)['patch_tokens'],
                           strict.backbone(x)['patch_tokens'])
        captured = []
        orig = model.backbone._embed_tokens

        def spy(patches, img_hw, grid_hw):
            out = orig(patches, img_hw, grid_hw)
            captured.append(out - torch.cat(
                [model.backbone.cls_token.expand(len(patches), -1, -1),
                 patches], dim=1))
            return out

        model.backbone._embed_tokens = spy
        feats = model.backbone(torch.randn(1, 3, 48, 80))
    assert feats['hw'] == (3, 5)
    pos = model.backbone.pos_embed
    expected = torch.cat(
        [pos[:, :1], resize_pos_embed_bicubic(pos[:, 1:], (3, 5))], dim=1)
    assert torch.allclose(captured[0], expected, atol=1e-6)
    with pytest.raises(ValueError, match='pos_embed_resize must be one of'):
        MODELS.build(dict(type='DeiTCAM', pos_embed_resize='dino'))


# ----------------------------------------------------------------------
# converter
def original_state_dict(model):
    """Our weights under the original TS-CAM names (DataParallel layout)."""
    sd = {'module.' + k: v.detach().clone()
          for k, v in model.backbone.state_dict().items()}
    conv = model.cam_head.semantic_conv
    sd['module.head.weight'] = conv.weight.detach().clone()
    sd['module.head.bias'] = conv.bias.detach().clone()
    return sd


def test_converter_round_trip():
    model = build(seed=1)
    ckpt = {'epoch': 7, 'state_dict': original_state_dict(model),
            'best_map': 0.5}
    out = convert_tscam(ckpt, num_heads=HEADS)
    meta = out['meta']
    assert (meta['num_classes'], meta['embed_dims'], meta['num_layers'],
            meta['img_size'], meta['num_heads']) == (C, D, L, S, HEADS)
    cfg = tscam_model_cfg(meta)
    twin = nn.ModuleDict(dict(backbone=MODELS.build(cfg['backbone']),
                              cam_head=MODELS.build(cfg['cam_head'])))
    twin.load_state_dict(out['state_dict'], strict=True)
    x = torch.randn(2, 3, S, S)
    model.eval(), twin.eval()
    with torch.no_grad():
        a = model.cam_head.predict_cams(model.backbone(x, [0, 1, 2]))
        b = twin.cam_head.predict_cams(twin.backbone(x, [0, 1, 2]))
    for key in a:
        torch.testing.assert_close(a[key], b[key])


def test_converter_reports_unknown_and_missing_keys():
    model = build()
    src = original_state_dict(model)
    with pytest.raises(ValueError, match=r"unknown keys \['dist_token'\]"):
        convert_tscam(dict(src, **{'module.dist_token': torch.zeros(1)}))
    broken = dict(src)
    del broken['module.blocks.1.mlp.fc2.bias']
    with pytest.raises(ValueError, match=r'missing keys \[.blocks.1.mlp'):
        convert_tscam(broken)
    del broken['module.pos_embed']
    with pytest.raises(ValueError, match='not a TS-CAM checkpoint'):
        convert_tscam(broken)
    mct = dict(src)
    mct['module.cls_token'] = torch.zeros(1, C, D)
    with pytest.raises(ValueError, match='mctformer2wsss'):
        convert_tscam(mct)
    deit = dict(src)
    deit['module.head.weight'] = torch.zeros(1000, D)
    with pytest.raises(ValueError, match='Pretrained'):
        convert_tscam(deit)


class _Evil:
    def __reduce__(self):
        return (print, ('this pickle runs code',))


def test_converter_tool(tmp_path, capsys):
    model = build(seed=2)
    src = tmp_path / 'model_best.pth'
    dst = tmp_path / 'converted.pth'
    torch.save({'epoch': 1, 'state_dict': original_state_dict(model),
                'best_map': 0.0}, src)
    cmd = [sys.executable, 'tools/model_converters/tscam2wsss.py']
    proc = subprocess.run(cmd + [str(src), str(dst), '--num-heads',
                                 str(HEADS)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "'DeiTCAM'" in proc.stdout or '"DeiTCAM"' in proc.stdout
    out = torch.load(dst, weights_only=True)
    assert set(out) == {'state_dict', 'meta'}
    ours = {f'backbone.{k}': v for k, v in model.backbone.state_dict().items()}
    assert set(out['state_dict']) == set(ours) | {
        'cam_head.semantic_conv.weight', 'cam_head.semantic_conv.bias'}
    for k, v in ours.items():
        assert torch.equal(out['state_dict'][k], v), k
    # a code-running pickle is refused (weights_only=True)
    evil = tmp_path / 'evil.pth'
    with open(evil, 'wb') as f:
        pickle.dump({'state_dict': _Evil()}, f)
    tool = runpy.run_path(str(REPO_ROOT / cmd[1]))  # in-process: faster
    with pytest.raises(pickle.UnpicklingError, match='Weights only load'):
        tool['main']([str(evil), str(tmp_path / 'x.pth')])
    assert 'this pickle runs code' not in capsys.readouterr().out
    assert not (tmp_path / 'x.pth').exists()


# ----------------------------------------------------------------------
# ImageNet DeiT initialisation
def test_init_from_local_deit_drops_head_and_loads_norm(tmp_path):
    ref = build().backbone.state_dict()
    torch.manual_seed(3)
    sd = {k: torch.randn_like(v) for k, v in ref.items()}
    sd['pos_embed'] = torch.randn(1, 1 + 3 * 3, D)  # a 48 px DeiT grid
    sd['head.weight'] = torch.randn(1000, D)
    sd['head.bias'] = torch.randn(1000)
    path = tmp_path / 'deit.pth'
    torch.save({'model': sd}, path)
    backbone = MODELS.build(dict(type='DeiTCAM', img_size=S, embed_dims=D,
                                 num_layers=L, num_heads=HEADS,
                                 pretrained=str(path)))
    backbone.init_weights()
    assert sorted(backbone.load_report['dropped']) == ['head.bias',
                                                       'head.weight']
    assert backbone.load_report['missing'] == []
    assert torch.equal(backbone.norm.weight, sd['norm.weight'])
    assert torch.equal(backbone.cls_token, sd['cls_token'])
    assert torch.equal(backbone.pos_embed[:, :1], sd['pos_embed'][:, :1])
    assert torch.allclose(
        backbone.pos_embed[:, 1:],
        resize_pos_embed_bicubic(sd['pos_embed'][:, 1:], (2, 2)))


# ----------------------------------------------------------------------
# bad input
@pytest.mark.parametrize('kwargs,error,match', [
    (dict(loss_type='bce'), ValueError, 'loss_type must be one of'),
    (dict(cam_layers=0), ValueError, 'must be >= 1'),
    (dict(cam_layers=[]), ValueError, 'list is empty'),
    (dict(cam_layers='last'), TypeError, 'cam_layers must be None'),
    (dict(cam_layers=True), TypeError, 'cam_layers must be None'),
    (dict(num_classes=0), ValueError, 'num_classes must be'),
])
def test_head_rejects_bad_arguments(kwargs, error, match):
    cfg = dict(type='TSCAMHead', num_classes=C, in_channels=D)
    cfg.update(kwargs)
    with pytest.raises(error, match=match):
        MODELS.build(cfg)


def test_head_rejects_bad_labels_and_missing_attention():
    model = build()  # loss_type='ce', the original
    feats = model.backbone(torch.randn(2, 3, S, S))
    with pytest.raises(ValueError, match="loss_type='multilabel'"):
        model.cam_head.loss(feats, multi_hot())
    with pytest.raises(ValueError, match=r'\(B, 5\) one-hot'):
        model.cam_head.loss(feats, torch.zeros(2, C + 1))
    ml = build(loss_type='multilabel')
    with pytest.raises(ValueError, match='multi-label targets'):
        ml.cam_head.loss(feats, torch.tensor([0, 1]))
    out_of_range = build(cam_layers=[5]).cam_head
    with pytest.raises(ValueError, match='out of range for 3 layers'):
        out_of_range.cam_attn_layers(L)
    with pytest.raises(KeyError, match=r'capture_layers='):
        model.cam_head.predict_cams(feats)  # nothing captured


def test_ce_loss_is_cross_entropy_of_gap_logits():
    model = build()
    feats = model.backbone(torch.randn(2, 3, S, S))
    logits = model.cam_head.train_logits(feats)['logits']
    y = torch.tensor([4, 2])
    loss = model.cam_head.loss(feats, y)['loss_cls']
    assert torch.allclose(loss, F.cross_entropy(logits, y))
    ml = build(loss_type='multilabel', loss_weight=2.0).cam_head
    ml.load_state_dict(model.cam_head.state_dict())
    assert torch.allclose(
        ml.loss(feats, multi_hot())['loss_cls'],
        2.0 * F.multilabel_soft_margin_loss(logits, multi_hot()))


# ----------------------------------------------------------------------
# box helpers (lib/cams_deit.py)
def test_cam_to_box_largest_contour_and_threshold():
    cam = np.zeros((40, 50), np.float32)
    cam[10:20, 5:30] = 1.0     # large blob: rows 10-19, cols 5-29
    cam[30:33, 40:45] = 0.9    # small blob
    cam[0:2, 0:2] = 0.3        # below the threshold (0.5 * 255)
    assert cam_to_box(cam, 0.5) == [5, 10, 30, 20]  # exclusive ends
    assert cam_to_box(np.zeros((8, 8), np.float32), 0.5) == [0, 0, 1, 1]
    # a constant map normalises to NaN (no eps, as the original): no box
    flat = resize_normalize_cam(torch.ones(1, 2, 2), (8, 8))
    assert torch.isnan(flat).all()
    assert cam_to_box(flat[0], 0.5) == [0, 0, 1, 1]
    with pytest.raises(ValueError, match=r'\(H, W\)'):
        cam_to_box(np.zeros((1, 8, 8), np.float32), 0.5)


def test_resize_normalize_and_iou():
    cams = torch.tensor([[[0., 1.], [2., 3.]]])
    out = resize_normalize_cam(cams, (6, 4))
    assert out.shape == (1, 6, 4)
    assert out.min() == 0 and out.max() == 1
    assert box_iou_inclusive([0, 0, 9, 9], [0, 0, 9, 9]) == 1.0
    # 10x10 vs 10x5 inclusive boxes -> 50 / 100
    assert box_iou_inclusive([0, 0, 9, 9], [0, 0, 9, 4]) == 0.5


# ----------------------------------------------------------------------
# registry and configs
def test_configs_parse_and_build():
    from mmengine.registry import init_default_scope
    init_default_scope('mmseg')
    for path in (SYNTH_CONFIG, VOC_CONFIG):
        cfg = Config.fromfile(str(REPO_ROOT / path))
        assert cfg.model.backbone.type == 'DeiTCAM'
        assert cfg.model.cam_head.type == 'TSCAMHead'
        assert cfg.model.cam_head.loss_type == 'multilabel'
    voc = Config.fromfile(str(REPO_ROOT / VOC_CONFIG))
    assert voc.model.backbone.pos_embed_resize is None  # the original
    # test images are resized to the training size (the original transform)
    resize = voc.test_pipeline[1]
    assert resize.type == 'Resize' and tuple(resize.scale) == (224, 224)
    synth = Config.fromfile(str(REPO_ROOT / SYNTH_CONFIG))
    model = MODELS.build(synth.model)
    assert model.num_classes == 5 and model.backbone.num_layers == 4
