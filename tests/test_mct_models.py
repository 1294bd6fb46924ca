"""Properties of the MCTformer components (beyond golden parity).

Fused vs explicit attention, attention capture only where needed, argument
validation, converter round trip and key errors, ImageNet initialisation,
the CAM maths helpers and registry builds. Tiny models, CPU, float32.
"""
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from golden_utils import REPO_ROOT
from mmseg.registry import MODELS
from wsss_zoo.converters.mctformer import (convert_mctformer,
                                           mctformer_model_cfg)
from wsss_zoo.models.utils.attention import CaptureAttention
from wsss_zoo.models.utils.cam import (aggregate_views, cams_to_mask,
                                       normalize_cams, upsample_cams)
from wsss_zoo.models.utils.pos_embed import (resize_pos_embed_dino,
                                             upsample_pos_embed_nearest)

D, L, HEADS, C, S = 32, 3, 2, 4, 32
BACKBONES = dict(v1='MCTformerV1', v2='MCTformerV2', plus='MCTformerPlus')


def build(version='v2', seed=0, **head_kwargs):
    torch.manual_seed(seed)
    backbone = MODELS.build(
        dict(type=BACKBONES[version], img_size=S, patch_size=16,
             embed_dims=D, num_layers=L, num_heads=HEADS, num_classes=C,
             drop_path_rate=0.))
    backbone.init_weights()
    head = MODELS.build(
        dict(type='MCTHead', num_classes=C, in_channels=D, version=version,
             **head_kwargs))
    for blk in backbone.blocks:  # make the fused path SDPA whatever the env
        blk.attn.fused_attn = True
    return nn.ModuleDict(dict(backbone=backbone, cam_head=head))


def labels(B=2):
    y = torch.zeros(B, C)
    y[0, 1] = 1
    y[1, [0, 3]] = 1
    return y


@pytest.fixture
def attn_calls(monkeypatch):
    """Record (capture flag, map kept) of every attention call and count
    calls of F.scaled_dot_product_attention."""
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
# attention: fused vs explicit, capture only where needed
@pytest.mark.parametrize('version', ['v1', 'v2', 'plus'])
def test_fused_and_explicit_attention_agree(version):
    model = build(version, cam_layers=2)
    model.train()
    x = torch.randn(2, 3, S, S)
    results = []
    for capture in (None, list(range(L))):
        model.zero_grad()
        xi = x.clone().requires_grad_(True)
        feats = model.backbone(xi, capture_layers=capture)
        loss = sum(model.cam_head.loss(feats, labels()).values())
        loss.backward()
        grads = [p.grad.clone() for p in model.parameters()
                 if p.grad is not None]
        results.append((feats, loss.detach(), xi.grad, grads))
    (f0, l0, gx0, g0), (f1, l1, gx1, g1) = results
    assert f0['attn'] == {} and sorted(f1['attn']) == list(range(L))
    for key in ('cls_tokens', 'patch_tokens'):
        torch.testing.assert_close(f0[key], f1[key], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(l0, l1, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gx0, gx1, rtol=1e-4, atol=1e-6)
    assert len(g0) == len(g1) > 0
    for a, b in zip(g0, g1):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_training_forward_builds_no_attention_map(attn_calls):
    model = build('plus')
    model.train()
    feats = model.backbone(torch.randn(2, 3, S, S))
    sum(model.cam_head.loss(feats, labels()).values()).backward()
    assert feats['attn'] == {}
    assert attn_calls['attn'] == [(False, False)] * L
    assert attn_calls['sdpa'] == L
    assert all(not blk.attn.capture and blk.attn.attn_map is None
               for blk in model.backbone.blocks)


@pytest.mark.parametrize('mode,expected', [('fused', [1, 2]),
                                           ('mct', [1, 2]),
                                           ('patchcam', [])])
def test_cam_mode_captures_only_needed_layers(attn_calls, mode, expected):
    model = build('v2', cam_mode=mode, cam_layers=2)
    model.eval()
    layers = model.cam_head.cam_attn_layers(model.backbone.num_layers)
    assert layers == expected
    with torch.no_grad():
        feats = model.backbone(torch.randn(1, 3, 48, 64),
                               capture_layers=layers)
        cams = model.cam_head.predict_cams(feats)['cams']
    assert sorted(feats['attn']) == expected
    assert cams.shape == (1, C, 3, 4)
    assert [kept for _, kept in attn_calls['attn']] == [
        i in expected for i in range(L)]
    assert attn_calls['sdpa'] == L - len(expected)
    for attn in feats['attn'].values():  # N = C + 3 * 4 patches
        assert attn.shape == (1, HEADS, C + 12, C + 12)


def test_capture_layer_indices():
    backbone = build('v1').backbone
    feats = backbone(torch.randn(1, 3, S, S), capture_layers=[-1, 0, -3])
    assert sorted(feats['attn']) == [0, L - 1]
    with pytest.raises(ValueError, match='out of range'):
        backbone(torch.randn(1, 3, S, S), capture_layers=[L])
    head = build('v1').cam_head
    with pytest.raises(KeyError, match='captured'):
        head.predict_cams(backbone(torch.randn(1, 3, S, S),
                                   capture_layers=[0]))


def test_cam_layers_larger_than_depth_use_all_layers():
    head = build('plus').cam_head  # MCTformer+ default: 12 layers
    assert head.cam_layers == 12
    assert head.cam_attn_layers(L) == list(range(L))


# ----------------------------------------------------------------------
# validation
@pytest.mark.parametrize('kwargs,match', [
    (dict(version='v3'), 'version must be one of'),
    (dict(version='v1', cam_mode='fused'), 'V1 has no PatchCAM'),
    (dict(version='v2', cam_mode='attn'), 'cam_mode must be one of'),
    (dict(version='v2', cam_layers=0), 'cam_layers'),
    (dict(version='v2', loss_weights=dict(cct=1.)), 'unknown loss_weights'),
    (dict(version='plus', decay_parameter=1.5), 'decay_parameter'),
])
def test_head_rejects_bad_choices(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MODELS.build(dict(type='MCTHead', num_classes=C, in_channels=D,
                          **kwargs))


@pytest.mark.parametrize('version', ['v1', 'v2', 'plus'])
def test_image_smaller_than_patch_raises(version):
    backbone = build(version).backbone
    with pytest.raises(ValueError, match=r'12x40 .*one patch \(16x16\)'):
        backbone(torch.randn(1, 3, 12, 40))


# ----------------------------------------------------------------------
# converter
def original_state_dict(model, version):
    """The model's weights in the original MCTformer key layout."""
    sd = {k[len('backbone.'):]: v.clone() for k, v in model.state_dict(
    ).items() if k.startswith('backbone.')}
    if version == 'v1':
        sd['head.weight'] = torch.randn(C, D)  # unused Linear
        sd['head.bias'] = torch.randn(C)
    else:
        sd['head.weight'] = model.cam_head.patch_cam.weight.detach().clone()
        sd['head.bias'] = model.cam_head.patch_cam.bias.detach().clone()
    if version == 'plus':
        sd['pos_embed'] = torch.randn(1, 5, D)  # unused parent pos_embed
    return sd


@pytest.mark.parametrize('version', ['v1', 'v2', 'plus'])
def test_converter_round_trip(version):
    model = build(version, seed=1)
    src = original_state_dict(model, version)
    out = convert_mctformer({'model': src}, num_heads=HEADS)
    meta = out['meta']
    assert meta['version'] == version
    assert (meta['num_classes'], meta['embed_dims'], meta['num_layers'],
            meta['img_size']) == (C, D, L, S)
    dropped = dict(v1=['head.bias', 'head.weight'], v2=[],
                   plus=['pos_embed'])[version]
    assert sorted(meta['dropped_keys']) == dropped
    cfg = mctformer_model_cfg(meta)
    twin = nn.ModuleDict(dict(backbone=MODELS.build(cfg['backbone']),
                              cam_head=MODELS.build(cfg['cam_head'])))
    twin.load_state_dict(out['state_dict'], strict=True)
    x = torch.randn(1, 3, S, S)
    model.eval(), twin.eval()
    with torch.no_grad():
        a = model.cam_head.train_logits(model.backbone(x))
        b = twin.cam_head.train_logits(twin.backbone(x))
    for key in a:
        torch.testing.assert_close(a[key], b[key])


def test_converter_reports_unknown_and_missing_keys():
    model = build('v2')
    src = original_state_dict(model, 'v2')
    with pytest.raises(ValueError, match=r"unknown keys \['dist_token'\]"):
        convert_mctformer(dict(src, dist_token=torch.zeros(1, 1, D)))
    broken = dict(src)
    del broken['blocks.1.mlp.fc2.bias']
    with pytest.raises(ValueError, match='blocks.1.mlp.fc2.bias'):
        convert_mctformer(broken)
    with pytest.raises(ValueError, match="looks like 'v2'"):
        convert_mctformer(src, version='v1')
    no_head = {k: v for k, v in src.items() if not k.startswith('head.')}
    with pytest.raises(ValueError, match='V1 from V2'):
        convert_mctformer(no_head)


def test_converter_tool(tmp_path):
    model = build('v2', seed=2)
    src = tmp_path / 'MCTformerV2.pth'
    dst = tmp_path / 'converted.pth'
    torch.save({'model': original_state_dict(model, 'v2')}, src)
    proc = subprocess.run(
        [sys.executable, 'tools/model_converters/mctformer2wsss.py',
         str(src), str(dst), '--num-heads', str(HEADS)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'MCTformerV2' in proc.stdout
    out = torch.load(dst, weights_only=True)
    assert set(out) == {'state_dict', 'meta'}
    assert all(k.startswith(('backbone.', 'cam_head.'))
               for k in out['state_dict'])


# ----------------------------------------------------------------------
# ImageNet initialisation
def fake_deit(grid=3):
    torch.manual_seed(3)
    sd = dict(cls_token=torch.randn(1, 1, D),
              pos_embed=torch.randn(1, 1 + grid * grid, D))
    ref = build('v2').backbone.state_dict()
    for k, v in ref.items():
        if k.startswith(('blocks.', 'patch_embed.', 'norm.')):
            sd[k] = torch.randn_like(v)
    sd['head.weight'] = torch.randn(1000, D)
    sd['head.bias'] = torch.randn(1000)
    return sd


def test_init_from_local_deit_repeats_class_token(tmp_path):
    sd = fake_deit(grid=3)
    path = tmp_path / 'deit.pth'
    torch.save({'model': sd}, path)
    backbone = MODELS.build(
        dict(type='MCTformerV2', img_size=S, embed_dims=D, num_layers=L,
             num_heads=HEADS, num_classes=C, pretrained=str(path)))
    backbone.init_weights()
    assert backbone.cls_token.shape == (1, C, D)
    torch.testing.assert_close(backbone.cls_token,
                               sd['cls_token'].expand(1, C, D))
    torch.testing.assert_close(backbone.pos_embed[:, :C],
                               sd['pos_embed'][:, :1].expand(1, C, D))
    assert backbone.pos_embed.shape == (1, C + (S // 16)**2, D)
    torch.testing.assert_close(backbone.blocks[1].attn.qkv.weight,
                               sd['blocks.1.attn.qkv.weight'])
    report = backbone.load_report
    assert report['dropped'] == ['head.weight', 'head.bias']
    assert report['unexpected'] == [] and report['missing'] == []


def test_init_plus_from_deit_upsamples_patch_grid(tmp_path):
    sd = fake_deit(grid=1)  # 1x1 grid -> 2x2 training grid: nearest x2
    sd['dist_token'] = torch.zeros(1, 1, D)
    path = tmp_path / 'deit.pth'
    torch.save(sd, path)
    backbone = MODELS.build(
        dict(type='MCTformerPlus', img_size=S, embed_dims=D, num_layers=L,
             num_heads=HEADS, num_classes=C,
             init_cfg=dict(type='Pretrained', checkpoint=str(path))))
    backbone.init_weights()
    torch.testing.assert_close(backbone.pos_embed_cls,
                               sd['pos_embed'][:, :1].expand(1, C, D))
    torch.testing.assert_close(backbone.pos_embed_pat,
                               sd['pos_embed'][:, 1:].expand(1, 4, D))
    torch.testing.assert_close(backbone.cls_token,
                               sd['cls_token'].expand(1, C, D))
    assert backbone.load_report['unexpected'] == ['dist_token']


def test_init_rejects_url_and_missing_file(tmp_path):
    for path, err in (('https://x/deit.pth', ValueError),
                      (str(tmp_path / 'none.pth'), FileNotFoundError)):
        backbone = MODELS.build(
            dict(type='MCTformerV1', img_size=S, embed_dims=D, num_layers=L,
                 num_heads=HEADS, num_classes=C, pretrained=path))
        with pytest.raises(err):
            backbone.init_weights()


# ----------------------------------------------------------------------
# helpers
def test_pos_embed_helpers():
    pos = torch.randn(1, 16, 8)
    assert resize_pos_embed_dino(pos, (3, 5)).shape == (1, 15, 8)
    up = upsample_pos_embed_nearest(pos, 2).reshape(8, 8, 8)
    torch.testing.assert_close(up[::2, ::2], pos.reshape(4, 4, 8))
    torch.testing.assert_close(up[1::2, 1::2], pos.reshape(4, 4, 8))


def test_cam_helpers():
    torch.manual_seed(0)
    cams = torch.rand(1, 2, 3, 4)
    y = torch.tensor([[1., 0.]])
    norm = normalize_cams(cams, labels=y)
    assert norm[0, 0].min() == 0 and norm[0, 0].max() == pytest.approx(1)
    assert (norm[0, 1] == 0).all()
    flipped = cams.flip(-1)
    total = aggregate_views([cams, flipped], [False, True], (6, 8))
    torch.testing.assert_close(total, 2 * upsample_cams(cams, (6, 8)))
    masked = aggregate_views([cams], [False], (3, 4), labels=y)
    assert (masked[0, 1] == 0).all()
    mask = cams_to_mask(torch.tensor([[[[0.9, 0.1]], [[0.2, 0.3]]]]), 0.25)
    assert mask.tolist() == [[[1, 2]]]
    assert mask.dtype == torch.long


def test_patch_affinity_refiner_formula():
    model = build('v2')
    model.eval()
    refiner = MODELS.build(dict(type='PatchAffinityRefiner', layers=[-1]))
    assert refiner.attn_layers(L) == [L - 1]
    assert MODELS.build(dict(type='PatchAffinityRefiner')).attn_layers(
        L) == list(range(L))
    with torch.no_grad():
        feats = model.backbone(torch.randn(1, 3, S, S), capture_layers=[-1])
    cams = torch.rand(1, C, 2, 2)
    pa = feats['attn'][L - 1].mean(1)[:, C:, C:]
    expected = torch.einsum('bij,bcj->bci', pa, cams.flatten(2))
    torch.testing.assert_close(
        refiner(cams, feats), expected.reshape(1, C, 2, 2))


def test_registered_names_build():
    for name in ('MCTformerV1', 'MCTformerV2', 'MCTformerPlus'):
        b = MODELS.build(dict(type=name, embed_dims=D, num_layers=1,
                              num_heads=HEADS, num_classes=C))
        assert b.num_layers == 1 and not b.norm.weight.requires_grad
    assert MODELS.build(dict(type='MCTHead', num_classes=20,
                             in_channels=384)).version == 'v2'
    assert MODELS.build(dict(type='PatchAffinityRefiner')).layers is None


def test_cam_segmentor_integration():
    """The lead's CAMSegmentor trains without attention maps and predicts
    masks with the MCT components (contract check)."""
    from mmseg.structures import SegDataSample
    model = MODELS.build(dict(
        type='CAMSegmentor',
        backbone=dict(type='MCTformerV2', img_size=S, embed_dims=D,
                      num_layers=L, num_heads=HEADS, num_classes=C),
        cam_head=dict(type='MCTHead', num_classes=C, in_channels=D,
                      cam_layers=2),
        refiners=[dict(type='PatchAffinityRefiner')]))
    model.init_weights()
    samples = []
    for y in labels():
        s = SegDataSample()
        s.set_field(y, 'gt_img_label')
        s.set_metainfo(dict(ori_shape=(S, S), img_shape=(S, S)))
        samples.append(s)
    x = torch.randn(2, 3, S, S)
    losses = model.loss(x, samples)
    assert set(losses) == {'loss_cls', 'loss_patch'}
    model.eval()
    with torch.no_grad():
        out = model.predict(x, samples)
    assert out[0].pred_sem_seg.data.shape == (1, S, S)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
@pytest.mark.parametrize('version', ['v1', 'v2', 'plus'])
def test_cuda_amp_loss_and_cams(version):
    model = build(version).cuda()
    x = torch.randn(2, 3, S, S, device='cuda')
    with torch.autocast('cuda', dtype=torch.float16):
        losses = model.cam_head.loss(model.backbone(x), labels().cuda())
        sum(losses.values()).backward()
        model.eval()
        with torch.no_grad():
            layers = model.cam_head.cam_attn_layers(L)
            feats = model.backbone(x, capture_layers=layers)
            out = model.cam_head.predict_cams(feats)
    assert out['cams'].shape == (2, C, 2, 2)
    assert torch.isfinite(out['cams'].float()).all()
