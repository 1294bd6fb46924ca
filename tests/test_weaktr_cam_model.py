"""Properties of the WeakTr stage-1 components (beyond golden parity).

Attention capture limited to the fused layers (and the same loss as
capturing everything), gradient isolation of the fine-CAM term, the AAF
against a literal transcription of the original formula (both poolings),
the attention-branch outputs of the backbone, CAM modes, argument and
feature validation, converter round trip / errors / CLI (layout detection,
stage-2 dispatch), configs. Tiny models, CPU, float32.
"""
import importlib.util
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from golden_utils import REPO_ROOT
from mmseg.registry import MODELS
from wsss_zoo.converters.weaktr import convert_weaktr, weaktr_model_cfg
from wsss_zoo.models.utils.attention import (CaptureAttention,
                                             materialize_all_attention)

D, L, HEADS, C, S, P = 32, 3, 2, 4, 32, 8  # grid 4 x 4 at S x S


def build(seed=0, pool='max', **head_kwargs):
    torch.manual_seed(seed)
    backbone = MODELS.build(
        dict(type='WeakTrViT', img_size=S, patch_size=P, embed_dims=D,
             num_layers=L, num_heads=HEADS, num_classes=C,
             drop_path_rate=0.))
    backbone.init_weights()
    head_kwargs.setdefault('reduction', 2)
    head = MODELS.build(
        dict(type='WeakTrHead', num_classes=C, in_channels=D, num_layers=L,
             num_heads=HEADS, feat_reduction=4, pool=pool, **head_kwargs))
    for blk in backbone.blocks:  # make the fused path SDPA whatever the env
        blk.attn.fused_attn = True
    return nn.ModuleDict(dict(backbone=backbone, cam_head=head))


def build_segmentor(**head_kwargs):
    torch.manual_seed(0)
    model = MODELS.build(dict(
        type='CAMSegmentor',
        backbone=dict(type='WeakTrViT', img_size=S, patch_size=P,
                      embed_dims=D, num_layers=L, num_heads=HEADS,
                      num_classes=C, drop_path_rate=0.),
        cam_head=dict(type='WeakTrHead', num_classes=C, in_channels=D,
                      num_layers=L, num_heads=HEADS, reduction=2,
                      feat_reduction=4, **head_kwargs)))
    model.init_weights()
    for blk in model.backbone.blocks:
        blk.attn.fused_attn = True
    return model


def labels(B=2):
    y = torch.zeros(B, C)
    y[0, 1] = 1
    y[1, [0, 3]] = 1
    return y


def samples(ys, shape=(S, S)):
    from mmseg.structures import SegDataSample
    out = []
    for y in ys:
        s = SegDataSample()
        s.set_field(y, 'gt_img_label')
        s.set_metainfo(dict(ori_shape=shape, img_shape=shape))
        out.append(s)
    return out


@pytest.fixture
def attn_calls(monkeypatch):
    """Record, per attention call, whether its map was kept, and count
    calls of F.scaled_dot_product_attention."""
    calls = dict(kept=[], sdpa=0)
    orig_forward = CaptureAttention.forward
    orig_sdpa = F.scaled_dot_product_attention

    def forward(self, *args, **kwargs):
        out = orig_forward(self, *args, **kwargs)
        calls['kept'].append(self.attn_map is not None)
        return out

    def sdpa(*args, **kwargs):
        calls['sdpa'] += 1
        return orig_sdpa(*args, **kwargs)

    monkeypatch.setattr(CaptureAttention, 'forward', forward)
    monkeypatch.setattr(F, 'scaled_dot_product_attention', sdpa)
    return calls


# ----------------------------------------------------------------------
# attention capture and the loss
@pytest.mark.parametrize('fuse_layers,expected', [(None, [0, 1, 2]),
                                                  ([1, -1], [1, 2])])
def test_training_captures_only_fused_layers(attn_calls, fuse_layers,
                                             expected):
    model = build_segmentor(fuse_layers=fuse_layers)
    model.train()
    head = model.cam_head
    assert head.loss_attn_layers(L) == expected
    assert head.cam_attn_layers(L) == expected
    x = torch.randn(2, 3, S, S)
    losses = model.loss(x, samples(labels()))
    assert set(losses) == {'loss_cls_token', 'loss_coarse_cam',
                           'loss_fine_cam'}
    assert attn_calls['kept'] == [i in expected for i in range(L)]
    assert attn_calls['sdpa'] == L - len(expected)
    # the same loss when every layer is captured / materialised
    feats = model.backbone(x, capture_layers=list(range(L)))
    assert sorted(feats['attn']) == sorted(feats['attn_out']) == [0, 1, 2]
    every = head.loss(feats, labels())
    with materialize_all_attention(model):
        explicit = model.loss(x, samples(labels()))
    for key, value in losses.items():
        torch.testing.assert_close(value, every[key], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(value, explicit[key], rtol=1e-5,
                                   atol=1e-6)


def test_fine_term_trains_only_the_aaf():
    model = build()
    model.train()
    x = torch.randn(2, 3, S, S, requires_grad=True)
    feats = model.backbone(x, capture_layers=list(range(L)))
    losses = model.cam_head.loss(feats, labels())
    losses['loss_fine_cam'].backward(retain_graph=True)
    for name, p in model.named_parameters():
        has_grad = p.grad is not None and p.grad.abs().sum() > 0
        assert has_grad == ('.aaf.' in name), name
    assert x.grad is None or x.grad.abs().sum() == 0
    model.zero_grad()
    (losses['loss_cls_token'] + losses['loss_coarse_cam']).backward()
    for name, p in model.named_parameters():
        if '.aaf.' in name:
            assert p.grad is None or p.grad.abs().sum() == 0, name
    assert model.backbone.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert model.cam_head.coarse_conv.weight.grad.abs().sum() > 0


def original_aaf(aaf, maps, feats, pool):
    """Literal transcription of AAF.py::AAF (WeakTr HEAD) on the original
    layout: maps (B, K, N, N), feats (B, K, N, dh), channel head*L+layer."""
    b, c, n, m = feats.shape
    x = feats.permute(0, 1, 3, 2).contiguous().view(b, c * m, n, 1)
    pooled = (F.adaptive_max_pool2d(x, 1) if pool == 'max' else
              F.adaptive_avg_pool2d(x, 1))
    weight = aaf.attn_feat_ffn(pooled.view(b * c, m)).view(b, c)
    weight = aaf.attn_head_ffn(weight).view(b, c, 1, 1)
    return (maps * weight).mean(1), weight.view(b, c)


@pytest.mark.parametrize('pool', ['max', 'avg'])
def test_aaf_equals_original_formula(pool):
    model = build(pool=pool)
    for p in model.cam_head.aaf.parameters():  # spread the weights
        nn.init.normal_(p, std=0.5)
    N = C + 16
    attn = [torch.rand(2, HEADS, N, N).softmax(-1) for _ in range(L)]
    outs = [torch.randn(2, N, D) for _ in range(L)]
    fused = model.cam_head.aaf(attn, outs)
    # original layout: channel head*L + layer; feature "head" hd owns the
    # strided channels d*heads + hd of D
    maps = torch.stack(attn).permute(1, 2, 0, 3, 4).reshape(
        2, HEADS * L, N, N)
    feats = torch.stack(outs).reshape(L, 2, N, D // HEADS, HEADS).permute(
        1, 4, 0, 2, 3).reshape(2, HEADS * L, N, D // HEADS)
    ref_attn, ref_w = original_aaf(model.cam_head.aaf, maps, feats, pool)
    torch.testing.assert_close(fused['weights'], ref_w)
    torch.testing.assert_close(fused['attn'], ref_attn)
    assert ref_w.std() > 0.05  # the weights really differ per map
    # a contiguous (real-head) split is NOT what the original does
    contiguous = torch.stack(outs).reshape(L, 2, N, HEADS, D // HEADS)
    contiguous = contiguous.permute(1, 3, 0, 2, 4).reshape(
        2, HEADS * L, N, D // HEADS)
    _, wrong_w = original_aaf(model.cam_head.aaf, maps, contiguous, pool)
    assert not torch.allclose(wrong_w, fused['weights'])


def test_backbone_returns_attention_branch_outputs():
    model = build()
    model.eval()
    bb = model.backbone
    x = torch.randn(1, 3, 24, 40)  # non-square: grid 3 x 5, pos resized
    feats = bb(x, capture_layers=[0, 2])
    assert sorted(feats['attn_out']) == [0, 2]
    patches = bb.patch_embed(x).flatten(2).transpose(1, 2)
    tokens = bb._embed_tokens(patches, (24, 40), (3, 5))
    for i, blk in enumerate(bb.blocks):
        branch = blk.attn(blk.norm1(tokens))  # O_l, before the residual
        if i in feats['attn_out']:
            torch.testing.assert_close(feats['attn_out'][i], branch)
        tokens = tokens + branch
        tokens = tokens + blk.mlp(blk.norm2(tokens))
    torch.testing.assert_close(feats['patch_tokens'], tokens[:, C:])
    assert all(not blk.attn._forward_hooks for blk in bb.blocks)
    assert bb(x)['attn_out'] == {}


# ----------------------------------------------------------------------
# CAMs
def test_cam_modes_and_refinement():
    model = build(cam_mode='fused')
    model.eval()
    head = model.cam_head
    with torch.no_grad():
        feats = model.backbone(torch.randn(2, 3, S, 48),
                               capture_layers=head.cam_attn_layers(L))
        fused = head.fuse_attention(feats)['attn']
        coarse = F.relu(head.coarse_logits_map(feats))
        cross = fused[:, :C, C:].reshape(2, C, 4, 6)
        out = {}
        for mode in ('fused', 'patchcam', 'cross'):
            head.cam_mode = mode
            out[mode] = head.predict_cams(feats)
        head.patch_attn_refine = False
        unrefined = head.predict_cams(feats)
    torch.testing.assert_close(out['fused']['cams_unrefined'],
                               cross * coarse)
    torch.testing.assert_close(out['patchcam']['cams_unrefined'], coarse)
    torch.testing.assert_close(out['cross']['cams_unrefined'], cross)
    for o in out.values():
        pa = o['patch_attn']
        assert pa.shape == (2, 24, 24)
        refined = torch.einsum('bij,bcj->bci', pa,
                               o['cams_unrefined'].flatten(2))
        torch.testing.assert_close(o['cams'], refined.reshape(2, C, 4, 6))
    torch.testing.assert_close(unrefined['cams'],
                               unrefined['cams_unrefined'])
    assert (out['fused']['cams'] >= 0).all()


def test_segmentor_predict_nonsquare(attn_calls):
    model = build_segmentor(fuse_layers=[0, 2])
    model.eval()
    x = torch.randn(2, 3, 40, 56)  # grid 5 x 7
    with torch.no_grad():
        out = model.predict(x, samples(labels(), shape=(40, 56)))
    assert out[0].seg_logits.data.shape == (C + 1, 40, 56)
    assert out[1].pred_sem_seg.data.shape == (1, 40, 56)
    # only classes of the image label can be predicted
    assert set(out[0].pred_sem_seg.data.unique().tolist()) <= {0, 2}
    assert attn_calls['kept'] == [True, False, True]


# ----------------------------------------------------------------------
# validation
@pytest.mark.parametrize('kwargs,match', [
    (dict(cam_mode='mct'), 'cam_mode'),
    (dict(pool='sum'), 'pool'),
    (dict(loss_weights=dict(patch=1.)), 'loss_weights'),
    (dict(fuse_layers=[3]), 'out of range'),
    (dict(fuse_layers=[]), 'empty'),
    (dict(reduction=12), 'reduction'),
    (dict(in_channels=33), 'divisible'),
])
def test_head_rejects_bad_arguments(kwargs, match):
    cfg = dict(type='WeakTrHead', num_classes=C, in_channels=D,
               num_layers=L, num_heads=HEADS, reduction=2, feat_reduction=4)
    cfg.update(kwargs)
    with pytest.raises(ValueError, match=match):
        MODELS.build(cfg)


def test_head_rejects_bad_features_and_labels():
    model = build()
    head = model.cam_head
    x = torch.randn(1, 3, S, S)
    with pytest.raises(KeyError, match='capture_layers'):
        head.loss(model.backbone(x), labels()[:1])
    with pytest.raises(KeyError, match='capture_layers'):
        head.predict_cams(model.backbone(x, capture_layers=[0, 1]))
    mct = MODELS.build(dict(type='MCTformerV2', img_size=S, patch_size=P,
                            embed_dims=D, num_layers=L, num_heads=HEADS,
                            num_classes=C))
    with pytest.raises(KeyError, match='WeakTrViT'):
        head.predict_cams(mct(x, capture_layers=list(range(L))))
    feats = model.backbone(x, capture_layers=list(range(L)))
    with pytest.raises(ValueError, match=r'\(B, 4\)'):
        head.loss(feats, torch.ones(1, C + 1))
    with pytest.raises(ValueError, match='num_layers'):
        head.cam_attn_layers(L + 1)


# ----------------------------------------------------------------------
# converter
def original_state_dict(model):
    """Our weights in the original WeakTr key layout."""
    sd = {}
    for k, v in model.state_dict().items():
        if k.startswith('backbone.'):
            sd[k[len('backbone.'):]] = v.clone()
        elif k.startswith('cam_head.coarse_conv.'):
            sd['head.' + k.split('.')[-1]] = v.clone()
        else:
            sd[k.replace('cam_head.aaf.', 'adaptive_attention_fusion.')] = (
                v.clone())
    return sd


@pytest.mark.parametrize('reduction', [2, 4.])  # 4: int(6 / 4) = 1
def test_converter_round_trip(reduction):
    model = build(seed=1, reduction=reduction)
    for p in model.cam_head.aaf.parameters():
        nn.init.normal_(p, std=0.5)
    out = convert_weaktr({'model': original_state_dict(model), 'epoch': 7},
                         num_heads=HEADS)
    meta = out['meta']
    assert (meta['num_classes'], meta['embed_dims'], meta['num_layers'],
            meta['num_heads'], meta['img_size'], meta['patch_size'],
            meta['epoch']) == (C, D, L, HEADS, S, P, 7)
    cfg = weaktr_model_cfg(meta, pool='max')
    twin = nn.ModuleDict(dict(backbone=MODELS.build(cfg['backbone']),
                              cam_head=MODELS.build(cfg['cam_head'])))
    twin.load_state_dict(out['state_dict'], strict=True)
    x = torch.randn(1, 3, 40, 24)
    model.eval(), twin.eval()
    with torch.no_grad():
        a = model.cam_head.predict_cams(
            model.backbone(x, capture_layers=list(range(L))))
        b = twin.cam_head.predict_cams(
            twin.backbone(x, capture_layers=list(range(L))))
    for key in a:
        torch.testing.assert_close(a[key], b[key])


def test_converter_reports_layout_errors():
    src = original_state_dict(build())
    with pytest.raises(ValueError, match=r"unknown keys \['dist_token'\]"):
        convert_weaktr(dict(src, dist_token=torch.zeros(1, 1, D)))
    broken = dict(src)
    del broken['adaptive_attention_fusion.attn_feat_ffn.1.bias']
    with pytest.raises(ValueError, match='attn_feat_ffn.1.bias'):
        convert_weaktr(broken)
    v1 = {k: v for k, v in src.items() if 'adaptive' not in k}
    v1['adaptive_attention_fusion.fc.0.weight'] = torch.zeros(3, 6)
    v1['adaptive_attention_fusion.fc.2.weight'] = torch.zeros(6, 3)
    with pytest.raises(ValueError, match='V1 checkpoint'):
        convert_weaktr(v1)
    with pytest.raises(ValueError, match='weaktr_gcd'):
        convert_weaktr({'encoder.cls_token': torch.zeros(1, 1, D)})
    with pytest.raises(ValueError, match='imply 2 heads'):
        convert_weaktr(src, num_heads=4)
    linear = dict(src)
    linear['head.weight'] = torch.zeros(C, D)
    with pytest.raises(ValueError, match='3x3 conv'):
        convert_weaktr(linear)


def _load_cli():
    path = REPO_ROOT / 'tools' / 'model_converters' / 'weaktr2wsss.py'
    spec = importlib.util.spec_from_file_location('weaktr2wsss', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_converter_tool(tmp_path, capsys):
    """The CLI on a checkpoint saved like main.py (numpy float64 'miou',
    which a plain weights_only load refuses)."""
    model = build(seed=2)
    src, dst = tmp_path / 'checkpoint_best_mIoU.pth', tmp_path / 'out.pth'
    torch.save({'model': original_state_dict(model), 'epoch': 11,
                'miou': np.float64(61.5)}, src)
    _load_cli().main([str(src), str(dst), '--pool', 'max'])
    stdout = capsys.readouterr().out
    assert 'WeakTr stage 1' in stdout and '"WeakTrHead"' in stdout
    out = torch.load(dst, weights_only=True)
    model.load_state_dict(out['state_dict'], strict=True)
    assert out['meta']['epoch'] == 11


def test_converter_tool_dispatch(tmp_path, monkeypatch):
    cli = _load_cli()
    stage1 = original_state_dict(build())
    assert cli.detect_stage(stage1) == 1
    assert cli.detect_stage({'encoder.cls_token': 0, 'decoder.x': 0}) == 2
    assert cli.detect_stage({'cls_emb': 0}) == 2
    # stage 2 goes to the weaktr_gcd converter
    seen = {}

    class FakeGCD:
        @staticmethod
        def convert_weaktr_gcd(ckpt):
            seen['ckpt'] = ckpt
            return {'decode_head.cls_emb': torch.zeros(1)}, {'layout': 'x'}

    monkeypatch.setattr('wsss_zoo.converters.weaktr_gcd', FakeGCD)
    src2 = tmp_path / 'stage2.pth'
    torch.save({'model': {'encoder.a': torch.zeros(1),
                          'decoder.cls_emb': torch.zeros(1)}, 'n_cls': 21},
               src2)
    cli.main([str(src2), str(tmp_path / 'o2.pth')])
    assert seen['ckpt']['n_cls'] == 21
    assert 'decode_head.cls_emb' in torch.load(
        tmp_path / 'o2.pth', weights_only=True)['state_dict']
    # without the stage-2 module: stage 1 still converts, stage 2 explains
    monkeypatch.setitem(sys.modules, 'wsss_zoo.converters.weaktr_gcd', None)
    monkeypatch.delattr('wsss_zoo.converters.weaktr_gcd', raising=False)
    src1 = tmp_path / 'stage1.pth'
    torch.save({'model': stage1}, src1)
    cli.main([str(src1), str(tmp_path / 'o1.pth')])
    with pytest.raises(SystemExit, match='weaktr_gcd'):
        cli.main([str(src2), str(tmp_path / 'o3.pth')])


# ----------------------------------------------------------------------
# initialisation and configs
def test_init_from_local_deit_repeats_class_token(tmp_path):
    torch.manual_seed(3)
    ref = build().backbone.state_dict()
    sd = {k: torch.randn_like(v) for k, v in ref.items()
          if k.startswith(('blocks.', 'patch_embed.', 'norm.'))}
    sd.update(cls_token=torch.randn(1, 1, D),
              pos_embed=torch.randn(1, 1 + 16, D),
              **{'head.weight': torch.randn(1000, D),
                 'head.bias': torch.randn(1000)})
    path = tmp_path / 'deit.pth'
    torch.save({'model': sd}, path)
    bb = MODELS.build(dict(type='WeakTrViT', img_size=S, patch_size=P,
                           embed_dims=D, num_layers=L, num_heads=HEADS,
                           num_classes=C, pretrained=str(path)))
    bb.init_weights()
    assert torch.equal(bb.cls_token, sd['cls_token'].expand(1, C, D))
    assert torch.equal(bb.pos_embed[:, :C],
                       sd['pos_embed'][:, :1].expand(1, C, D))
    assert torch.equal(bb.blocks[1].mlp.fc1.weight,
                       sd['blocks.1.mlp.fc1.weight'])


def test_configs_parse_and_build():
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    init_default_scope('mmseg')
    voc = Config.fromfile(str(
        REPO_ROOT / 'configs/weaktr/weaktr_deit-s16_1xb64-60e_voc12aug-'
        '224x224.py'))
    head = voc.model.cam_head
    assert (head.type, head.reduction, head.pool, head.feat_reduction) == (
        'WeakTrHead', 8, 'max', 8)
    assert voc.model.backbone.type == 'WeakTrViT'
    assert voc.optim_wrapper.optimizer.lr == pytest.approx(7.5e-5)
    assert voc.optim_wrapper.optimizer.weight_decay == 0.03
    assert voc.train_dataloader.batch_size == 64
    assert voc.train_cfg.max_epochs == 60
    assert voc.model.test_cfg.bg_thresh == 0.43
    assert voc.val_evaluator.thresholds[0] == 0.4
    assert voc.val_evaluator.greedy
    scales = [t.scale_factor for t in voc.tta_pipeline[1].transforms[0]]
    assert scales == [1.0, 1.2]
    synth = Config.fromfile(str(
        REPO_ROOT / 'configs/weaktr/weaktr_vit-t8_1xb16-2k_synthshapes-'
        '96x96.py'))
    model = MODELS.build(synth.model)
    assert model.cam_head.loss_attn_layers(4) == [0, 1, 2, 3]
    x = torch.randn(1, 3, 96, 96)
    y = torch.tensor([[0., 1., 0., 0., 1.]])
    from mmseg.structures import SegDataSample
    s = SegDataSample()
    s.set_field(y[0], 'gt_img_label')
    s.set_metainfo(dict(ori_shape=(96, 96), img_shape=(96, 96)))
    assert set(model.loss(x, [s])) == {'loss_cls_token', 'loss_coarse_cam',
                                       'loss_fine_cam'}
