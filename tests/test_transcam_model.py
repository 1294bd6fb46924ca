"""Properties of the TransCAM components (beyond golden parity).

Fused training equals the materialised baseline and builds no attention map;
CAM mode captures exactly the refiner's layers; the refiner is correct on
non-square grids (row-major layout) and for each mode; the head's slot 0 is
never trained; the TransCAM normalisation; the converter (round trip, loud
errors, CLI, weights_only); ImageNet init; bad input; configs.
Tiny models, CPU, float32.
"""
import runpy
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.config import Config

from golden_utils import REPO_ROOT, rel_err
from mmseg.registry import MODELS
from wsss_zoo.converters.transcam import convert_transcam, transcam_model_cfg
from wsss_zoo.models.refiners.transcam_refiner import transcam_normalize
from wsss_zoo.models.utils.attention import (CaptureAttention,
                                             materialize_all_attention)

C, D, L, HEADS = 5, 32, 3, 2
BACKBONE = dict(type='Conformer', channel_ratio=0.25, embed_dims=D,
                num_layers=L, num_heads=HEADS, drop_path_rate=0.)
SYNTH_CONFIG = ('configs/transcam/'
                'transcam_conformer-t_1xb16-2k_synthshapes-96x96.py')
VOC_CONFIG = ('configs/transcam/'
              'transcam_conformer-s_1xb8-20e_voc12aug-512x512.py')


def build(seed=0, **backbone_kwargs):
    torch.manual_seed(seed)
    backbone = MODELS.build({**BACKBONE, **backbone_kwargs})
    backbone.init_weights()
    head = MODELS.build(dict(type='TransCAMHead', num_classes=C,
                             in_channels=backbone.out_channels,
                             embed_dims=D))
    head.init_weights()
    for blk in backbone.trans_blocks():  # fused = SDPA whatever the env
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


def test_fused_training_equals_materialized(attn_calls):
    model = build()
    model.train()
    x = torch.randn(2, 3, 64, 96)  # non-square
    state = {k: v.clone() for k, v in model.state_dict().items()}
    loss_f, gx_f, g_f = _loss_and_grads(model, x, multi_hot())
    # training: every block fused, no map captured or kept
    assert attn_calls['attn'] == [(False, False)] * L
    assert attn_calls['sdpa'] == L
    model.load_state_dict(state)  # same BN running stats as before
    with materialize_all_attention(model) as switched:
        loss_m, gx_m, g_m = _loss_and_grads(model, x, multi_hot())
    assert switched == L
    assert attn_calls['sdpa'] == L  # the baseline built every map
    assert rel_err(loss_f, loss_m) < 1e-6
    assert rel_err(gx_f, gx_m) < 1e-4
    # every parameter gets a gradient (no DDP unused parameters)
    assert g_f.keys() == g_m.keys() == {
        n for n, _ in model.named_parameters()}
    for name in g_f:
        # absolute floor 1e-7: biases before a train-mode BatchNorm
        # (expand_block) have a zero gradient up to rounding (~1e-8)
        err = (g_f[name] - g_m[name]).abs().max()
        assert err <= max(1e-4 * g_m[name].abs().max(), 1e-7), name


def test_loss_sums_logits_before_one_mlsm_and_never_trains_slot_0():
    model = build()
    model.train()
    feats = model.backbone(torch.randn(2, 3, 64, 64))
    y = multi_hot()
    out = model.cam_head(feats)
    loss = model.cam_head.loss(feats, y)['loss_cls']
    summed = (out['conv_logits'] + out['trans_logits'])[:, 1:]
    assert torch.allclose(loss, F.multilabel_soft_margin_loss(summed, y))
    two_losses = (
        F.multilabel_soft_margin_loss(out['conv_logits'][:, 1:], y) +
        F.multilabel_soft_margin_loss(out['trans_logits'][:, 1:], y))
    assert not torch.allclose(loss, two_losses)
    loss.backward()
    head = model.cam_head
    for layer in (head.conv_cls_head, head.trans_cls_head):
        assert layer.weight.shape[0] == C + 1
        assert layer.weight.grad[0].abs().max() == 0
        assert layer.bias.grad[0] == 0
        assert layer.weight.grad[1:].abs().max() > 0
    cams = head.predict_cams(feats)
    assert cams['cams'].shape == (2, C, 4, 4)
    assert torch.equal(cams['cams'], out['x_conv'][:, 1:])
    assert torch.allclose(cams['logits'], summed)


# ----------------------------------------------------------------------
# CAM mode: exactly the refiner's layers are captured
@pytest.mark.parametrize('mode,layers,expected', [
    ('transcam', None, [True] * L),
    ('clsattn', [-1], [False, False, True]),
    ('convcam', None, [False] * L),
])
def test_cam_segmentor_captures_refiner_layers(attn_calls, mode, layers,
                                               expected):
    from mmseg.structures import SegDataSample
    model = MODELS.build(dict(
        type='CAMSegmentor', backbone=BACKBONE,
        cam_head=dict(type='TransCAMHead', num_classes=C, in_channels=64,
                      embed_dims=D),
        refiners=[dict(type='TransCAMRefiner', mode=mode, layers=layers)]))
    model.init_weights()
    H, W = 48, 80  # non-square
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
    assert [kept for _, kept in attn_calls['attn']] == expected
    assert out[0].seg_logits.data.shape == (C + 1, H, W)
    assert out[0].pred_sem_seg.data.shape == (1, H, W)


# ----------------------------------------------------------------------
# refiner
def _feats_from_attention(A, hw, heads=2):
    """feats whose head-mean summed attention over 2 layers equals A."""
    B, N, _ = A.shape
    per_layer = (A / 2)[:, None].expand(B, heads, N, N)
    return dict(attn={0: per_layer, 1: per_layer}, hw=hw, num_layers=2)


@pytest.mark.parametrize('mode', ['transcam', 'attnagg', 'clsattn'])
def test_refiner_matches_loops_on_non_square_grid(mode):
    torch.manual_seed(0)
    B, K, h, w = 2, 3, 3, 5
    P = h * w
    A = torch.rand(B, 1 + P, 1 + P)
    cams = torch.randn(B, K, h, w)
    refiner = MODELS.build(dict(type='TransCAMRefiner', mode=mode))
    out = refiner(cams, _feats_from_attention(A, (h, w)))
    ref = torch.zeros_like(cams)
    for b in range(B):
        for c in range(K):
            for i in range(P):
                yi, xi = divmod(i, w)  # row-major patch order
                if mode == 'clsattn':
                    ref[b, c, yi, xi] = A[b, 0, 1 + i] * cams[b, c, yi, xi]
                    continue
                for j in range(P):
                    yj, xj = divmod(j, w)
                    a = A[b, 1 + i, 1 + j] if mode == 'transcam' else \
                        A[b, 1 + j, 1 + i]
                    ref[b, c, yi, xi] += a * cams[b, c, yj, xj]
    assert rel_err(out, ref) < 1e-5


def test_refiner_shift_attention_moves_cams_along_width():
    """A query attending to its right neighbour copies that neighbour's CAM:
    the (h, w) layout is the token layout, also when h != w."""
    h, w = 2, 4
    P = h * w
    A = torch.zeros(1, 1 + P, 1 + P)
    for i in range(P):
        y, x = divmod(i, w)
        A[0, 1 + i, 1 + y * w + min(x + 1, w - 1)] = 1.
    cams = torch.arange(P, dtype=torch.float).reshape(1, 1, h, w)
    out = MODELS.build(dict(type='TransCAMRefiner'))(
        cams, _feats_from_attention(A, (h, w)))
    expected = torch.cat([cams[..., 1:], cams[..., -1:]], dim=-1)
    assert torch.equal(out, expected)


def test_refiner_sums_layers_and_averages_heads():
    torch.manual_seed(0)
    B, h, w = 1, 2, 3
    N = 1 + h * w
    maps = {i: torch.rand(B, 4, N, N) for i in range(3)}
    feats = dict(attn=maps, hw=(h, w), num_layers=3)
    refiner = MODELS.build(dict(type='TransCAMRefiner'))
    expected = sum(m.mean(dim=1) for m in maps.values())
    assert rel_err(refiner.attention_sum(feats), expected) < 1e-6
    sub = MODELS.build(dict(type='TransCAMRefiner', layers=[0, -1]))
    assert sub.attn_layers(3) == [0, 2]
    assert rel_err(sub.attention_sum(feats),
                   maps[0].mean(1) + maps[2].mean(1)) < 1e-6


def test_refiner_errors():
    with pytest.raises(ValueError, match='mode must be one of'):
        MODELS.build(dict(type='TransCAMRefiner', mode='gradcam'))
    refiner = MODELS.build(dict(type='TransCAMRefiner'))
    feats = dict(attn={0: torch.rand(1, 2, 7, 7)}, hw=(2, 3), num_layers=2)
    with pytest.raises(KeyError, match='capture_layers'):
        refiner(torch.randn(1, 3, 2, 3), feats)
    with pytest.raises(ValueError, match='token grid'):
        refiner(torch.randn(1, 3, 3, 2), feats)
    convcam = MODELS.build(dict(type='TransCAMRefiner', mode='convcam'))
    cams = torch.randn(1, 3, 2, 3)
    assert convcam.attn_layers(12) == [] and convcam(cams, {}) is cams


def test_transcam_normalize_like_infer_script():
    s = torch.tensor([[[-1., 0., 2., 4.]],      # has negatives: min 0
                      [[1., 2., 3., 5.]],       # positive everywhere
                      [[-1., -2., -3., -4.]]])  # <= 0 everywhere
    norm = transcam_normalize(s)
    eps = 1e-5
    assert torch.allclose(norm[0], torch.tensor(
        [[-eps, -eps, 2 - eps, 4 - eps]]) / (4 + eps))
    # the minimum pixel is zeroed and maps to -(mn + eps) / (mx - mn + eps)
    assert torch.allclose(norm[1], torch.tensor(
        [[-1 - eps, 1 - eps, 2 - eps, 4 - eps]]) / (4 + eps))
    assert torch.allclose(norm[2], torch.full((1, 4), -1.))


# ----------------------------------------------------------------------
# backbone
def test_backbone_shapes_and_bad_sizes():
    model = build()
    model.eval()
    with torch.no_grad():
        feats = model.backbone(torch.randn(1, 3, 48, 80),
                               capture_layers=[-1])
    assert feats['cnn_feat'].shape == (1, 64, 3, 5)
    assert feats['hw'] == (3, 5) and feats['patch_tokens'].shape == (
        1, 15, D)
    assert feats['cls_tokens'].shape == (1, 1, D)
    assert list(feats['attn']) == [L - 1]
    assert feats['attn'][L - 1].shape == (1, HEADS, 16, 16)
    # capture flags are reset after the call
    assert not any(b.attn.capture for b in model.backbone.trans_blocks())
    with pytest.raises(ValueError, match='multiple of 16'):
        model.backbone(torch.randn(1, 3, 40, 64))
    with pytest.raises(ValueError, match='out of range'):
        model.backbone(torch.randn(1, 3, 32, 32), capture_layers=[L])
    with pytest.raises(ValueError, match='multiple of 3'):
        MODELS.build({**BACKBONE, 'num_layers': 4})


def test_head_rejects_bad_labels():
    model = build()
    feats = model.backbone(torch.randn(2, 3, 32, 32))
    with pytest.raises(ValueError, match=r'\(B, 5\)'):
        model.cam_head.loss(feats, torch.ones(2, C + 1))
    with pytest.raises(ValueError, match='num_classes'):
        MODELS.build(dict(type='TransCAMHead', num_classes=0, in_channels=8,
                          embed_dims=8))


# ----------------------------------------------------------------------
# converter
def original_state_dict(model):
    """Our model's weights under the original ``Net`` key names."""
    return {k.split('.', 1)[1]: v for k, v in model.state_dict().items()}


def test_converter_round_trip():
    model = build(seed=3)
    model.eval()
    sd = original_state_dict(model)
    assert sd['conv_cls_head.weight'].shape[0] == C + 1
    conv = convert_transcam({'model': {'module.' + k: v
                                       for k, v in sd.items()}},
                            num_heads=HEADS)
    meta = conv['meta']
    assert (meta['num_classes'], meta['num_layers'], meta['embed_dims'],
            meta['channel_ratio']) == (C, L, D, 0.25)
    cfg = transcam_model_cfg(meta)
    other = nn.ModuleDict(dict(backbone=MODELS.build(cfg['backbone']),
                               cam_head=MODELS.build(cfg['cam_head'])))
    other.load_state_dict(conv['state_dict'], strict=True)
    other.eval()
    x = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        a = model.cam_head(model.backbone(x))['x_conv']
        b = other.cam_head(other.backbone(x))['x_conv']
    assert torch.equal(a, b)


def test_converter_reports_unknown_missing_and_misshaped_keys():
    sd = original_state_dict(build())
    bad = dict(sd)
    bad['conv_trans_2.extra.weight'] = torch.zeros(1)
    del bad['conv_trans_3.fusion_block.conv2.weight']
    with pytest.raises(ValueError) as err:
        convert_transcam(bad, num_heads=HEADS)
    assert 'conv_trans_3.fusion_block.conv2.weight' in str(err.value)
    assert 'backbone.conv_trans_2.extra.weight' in str(err.value)
    bad = dict(sd)
    bad['trans_1.norm1.weight'] = torch.zeros(D + 1)
    with pytest.raises(ValueError, match='trans_1.norm1.weight'):
        convert_transcam(bad, num_heads=HEADS)
    # counters may be absent: filled with 0 and reported
    no_counts = {k: v for k, v in sd.items()
                 if not k.endswith('num_batches_tracked')}
    conv = convert_transcam(no_counts, num_heads=HEADS)
    assert len(conv['meta']['filled_keys']) == len(sd) - len(no_counts) > 0
    with pytest.raises(ValueError, match='not a TransCAM'):
        convert_transcam({'blocks.0.attn.qkv.weight': torch.zeros(3, 1)})
    imagenet = dict(sd)
    imagenet['conv_cls_head.weight'] = torch.zeros(1000, 64)
    with pytest.raises(ValueError, match='ImageNet Conformer'):
        convert_transcam(imagenet, num_heads=HEADS)
    with pytest.raises(ValueError, match='does not divide'):
        convert_transcam(sd, num_heads=3)


def test_converter_tool(tmp_path, capsys):
    sd = original_state_dict(build())
    src, dst = tmp_path / 'TransCAM.pth', tmp_path / 'out.pth'
    torch.save(sd, src)
    tool = str(REPO_ROOT / 'tools/model_converters/transcam2wsss.py')
    argv = sys.argv
    try:
        sys.argv = [tool, str(src), str(dst), '--num-heads', str(HEADS)]
        runpy.run_path(tool, run_name='__main__')
    finally:
        sys.argv = argv
    assert 'TransCAMHead' in capsys.readouterr().out
    out = torch.load(dst, weights_only=True)
    assert set(out['state_dict']) == {
        ('cam_head.' if k.startswith(('conv_cls', 'trans_cls')) else
         'backbone.') + k for k in sd}
    # a pickle that would run code is refused (weights_only)
    evil = tmp_path / 'evil.pth'

    class Evil:
        def __reduce__(self):
            return (print, ('pwned', ))

    torch.save({'state_dict': Evil()}, evil)
    res = subprocess.run([sys.executable, tool, str(evil), str(dst)],
                         capture_output=True, text=True, cwd=REPO_ROOT)
    assert res.returncode != 0
    assert 'pwned' not in res.stdout
    assert 'not plain data' in res.stderr


# ----------------------------------------------------------------------
# ImageNet init
def test_init_from_local_imagenet_conformer(tmp_path):
    ref = build(seed=5).backbone
    sd = {k: v for k, v in ref.state_dict().items()}
    # upstream Conformer heads: Linear classifiers, 1000 classes
    sd['trans_cls_head.weight'] = torch.zeros(1000, D)
    sd['trans_cls_head.bias'] = torch.zeros(1000)
    sd['conv_cls_head.weight'] = torch.zeros(1000, ref.out_channels)
    sd['conv_cls_head.bias'] = torch.zeros(1000)
    path = tmp_path / 'Conformer_tiny.pth'
    torch.save({'model': sd}, path)
    model = MODELS.build(dict(
        type='CAMSegmentor',
        backbone={**BACKBONE, 'pretrained': str(path)},
        cam_head=dict(type='TransCAMHead', num_classes=C, in_channels=64,
                      embed_dims=D)))
    model.init_weights()
    report = model.backbone.load_report
    assert sorted(report['dropped']) == sorted(
        k for k in sd if k.endswith(('cls_head.weight', 'cls_head.bias')))
    assert report['missing'] == [] and report['unexpected'] == []
    for k, v in ref.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[k], v), k
    # the CAM heads keep their random init (21-ish outputs, not 1000)
    assert model.cam_head.conv_cls_head.weight.shape[0] == C + 1
    with pytest.raises(FileNotFoundError):
        MODELS.build({**BACKBONE, 'pretrained': str(tmp_path / 'no.pth')
                      }).init_weights()
    with pytest.raises(ValueError, match='local file'):
        MODELS.build({**BACKBONE, 'pretrained': 'https://x/y.pth'
                      }).init_weights()
    wrong = {**BACKBONE, 'embed_dims': 48, 'num_heads': 2,
             'pretrained': str(path)}
    with pytest.raises(ValueError, match='does not fit'):
        MODELS.build(wrong).init_weights()


# ----------------------------------------------------------------------
# configs
def test_configs_parse_and_build():
    from mmengine.registry import init_default_scope
    init_default_scope('mmseg')
    voc = Config.fromfile(str(REPO_ROOT / VOC_CONFIG))
    assert voc.model.backbone.type == 'Conformer'
    assert voc.model.cam_head.num_classes == 20
    assert voc.optim_wrapper.optimizer.lr == 5e-5
    assert voc.optim_wrapper.optimizer.weight_decay == 5e-4
    assert voc.train_dataloader.batch_size == 8
    assert voc.train_cfg.max_epochs == 20 and voc.param_scheduler == []
    sizes = [t.scale for t in voc.tta_pipeline[1].transforms[0]]
    assert sizes == [(256, 256), (512, 512), (768, 768)]
    synth = Config.fromfile(str(REPO_ROOT / SYNTH_CONFIG))
    model = MODELS.build(synth.model)
    assert model.num_classes == 5 and model.backbone.num_layers == 6
    assert model.backbone.out_channels == synth.model.cam_head.in_channels
    for t in synth.tta_pipeline[1].transforms[0]:
        assert t.scale[0] % 16 == 0 and t.scale[1] % 16 == 0
