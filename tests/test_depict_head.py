"""DEPICTHead and its converter: validation, paths, init, training, loading."""
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from golden_utils import rel_err
from mmengine.config import ConfigDict
from mmengine.runner import load_checkpoint
from mmengine.structures import PixelData

from mmseg.registry import MODELS
from mmseg.structures import SegDataSample
from wsss_zoo.converters.depict import (config_hints, convert_depict,
                                        load_state_dict_strict, map_depict_key)

REPO_ROOT = Path(__file__).resolve().parents[1]
TOOL = REPO_ROOT / 'tools' / 'model_converters' / 'depict2mmseg.py'
D, HEADS, LAYERS, N_CLS, P = 32, 2, 2, 5, 16


def build_head(**kwargs):
    cfg = dict(
        type='DEPICTHead',
        in_channels=D,
        embed_dims=D,
        num_layers=LAYERS,
        num_heads=HEADS,
        num_classes=N_CLS,
        patch_size=P)
    cfg.update(kwargs)
    head = MODELS.build(cfg)
    head.init_weights()
    return head


def build_segmentor(mode='sa', **backbone):
    backbone_cfg = dict(
        type='VisionTransformer',
        img_size=(64, 64),
        patch_size=P,
        embed_dims=D,
        num_layers=2,
        num_heads=2,
        mlp_ratio=4,
        out_indices=(1, ),
        qkv_bias=True,
        patch_bias=True,
        with_cls_token=True,
        final_norm=True,
        norm_cfg=dict(type='LN', eps=1e-5),
        interpolate_mode='bilinear')
    backbone_cfg.update(backbone)
    return MODELS.build(
        dict(
            type='EncoderDecoder',
            backbone=backbone_cfg,
            decode_head=dict(
                type='DEPICTHead',
                in_channels=D,
                embed_dims=D,
                num_layers=LAYERS,
                num_heads=HEADS,
                num_classes=N_CLS,
                mode=mode,
                patch_size=P),
            test_cfg=ConfigDict(mode='whole'))).eval()


def official_state_dict(mode='sa', seed=0, grid=(4, 4)):
    """Random tensors under the official DEPICT/Segmenter key names."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, mean=0.0, std=0.1):
        return mean + std * torch.randn(*shape, generator=g)

    sd = {
        'encoder.cls_token': rnd(1, 1, D),
        'encoder.pos_embed': rnd(1, 1 + grid[0] * grid[1], D),
        'encoder.patch_embed.proj.weight': rnd(D, 3, P, P, std=0.02),
        'encoder.patch_embed.proj.bias': rnd(D),
        'encoder.norm.weight': rnd(D, mean=1.0),
        'encoder.norm.bias': rnd(D),
        'encoder.head.weight': rnd(1000, D),
        'encoder.head.bias': rnd(1000),
    }
    for i in range(2):
        b = f'encoder.blocks.{i}.'
        for name, shape in (('attn.qkv', (3 * D, D)), ('attn.proj', (D, D)),
                            ('mlp.fc1', (4 * D, D)), ('mlp.fc2', (D, 4 * D))):
            sd[b + name + '.weight'] = rnd(*shape)
            sd[b + name + '.bias'] = rnd(shape[0], std=0.02)
        for name in ('norm1', 'norm2'):
            sd[b + name + '.weight'] = rnd(D, mean=1.0)
            sd[b + name + '.bias'] = rnd(D)
    dec = {'cls_emb': rnd(1, N_CLS, D, std=1.0)}
    stacks = [('net' if mode == 'sa' else 'snet', LAYERS, 100)]
    norms = ['decoder_norm'] if mode == 'sa' else ['snorm', 'cnorm']
    if mode == 'ca':
        stacks.append(('cnet', 3, 50))
    for stack, depth, head_dims in stacks:
        for i in range(depth):
            pre = f'{stack}.layers.{i}.'
            dec[pre + 'norm.weight'] = rnd(D, mean=1.0)
            dec[pre + 'norm.bias'] = rnd(D)
            dec[pre + 'fn.proj'] = rnd(HEADS * head_dims, D, std=0.06)
            dec[pre + 'fn.step_size'] = rnd(1, mean=0.5, std=0.2)
    for name in norms:
        dec[name + '.weight'] = rnd(D, mean=1.0)
        dec[name + '.bias'] = rnd(D)
    dec['mask_norm.weight'] = rnd(N_CLS, mean=1.0)
    dec['mask_norm.bias'] = rnd(N_CLS)
    sd.update({'decoder.' + k: v for k, v in dec.items()})
    return sd


def run_tool(capsys, *argv):
    """Run depict2mmseg.main in-process; returns its stdout."""
    spec = importlib.util.spec_from_file_location('depict2mmseg', TOOL)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    capsys.readouterr()
    tool.main(list(argv))
    return capsys.readouterr().out


# ------------------------------------------------------------- validation


def test_mode_must_be_sa_or_ca():
    with pytest.raises(ValueError, match=r"'sa'.*'ca'.*'xa'"):
        build_head(mode='xa')


def test_in_channels_must_equal_embed_dims():
    with pytest.raises(ValueError, match='in_channels.*embed_dims'):
        build_head(in_channels=2 * D)


def test_dropout_ratio_is_refused():
    with pytest.raises(ValueError, match='attn_drop_rate'):
        build_head(dropout_ratio=0.1)


def test_registered_and_no_conv_seg():
    head = build_head()
    assert not hasattr(head, 'conv_seg')
    assert 'conv_seg' not in dict(head.named_parameters())


# ---------------------------------------------------------------- forward


@pytest.mark.parametrize('mode', ['sa', 'ca'])
def test_fused_and_explicit_paths_agree(mode):
    torch.manual_seed(0)
    head = build_head(mode=mode).eval()
    # std-0.02 class embeddings are near-identical, and the LayerNorm over
    # classes then amplifies rounding noise; std 1 keeps the check tight
    torch.nn.init.normal_(head.cls_emb)
    feat = torch.randn(2, D, 3, 5)  # non-square grid
    out = {}
    for path in ('fused', 'explicit'):
        head.zero_grad()
        x = feat.clone().requires_grad_(True)
        if path == 'fused':
            masks = head([x])
        else:
            maps = head.get_attention_maps([x])
            masks = maps['seg_logits']
        (masks *
         torch.linspace(-1, 1, masks.numel()).view_as(masks)).sum().backward()
        grads = {n: p.grad.clone() for n, p in head.named_parameters()}
        # scalar step sizes are compared together (sums that may cancel)
        steps = [grads.pop(n) for n in list(grads) if 'step_size' in n]
        out[path] = [masks, x.grad, torch.cat(steps)] + list(grads.values())
    assert masks.shape == (2, N_CLS, 3, 5)
    for fused, explicit in zip(out['fused'], out['explicit']):
        assert rel_err(fused, explicit) < 1e-5
    T = 15 + N_CLS if mode == 'sa' else 15
    assert maps['self_attn'].shape == (LAYERS, 2, HEADS, T, T)
    torch.testing.assert_close(maps['self_attn'].sum(-1),
                               torch.ones(LAYERS, 2, HEADS, T))
    if mode == 'ca':
        assert maps['cross_attn'].shape == (3, 2, HEADS, N_CLS, 15)
    # maps are not kept after the call; the fused path is back on
    assert all(layer.attn_map is None and not layer.capture
               for layer in head.layers)


def test_init_follows_the_original():
    torch.manual_seed(0)
    head = build_head(embed_dims=256, in_channels=256, num_heads=3)
    proj = torch.cat([layer.proj.flatten() for layer in head.layers])
    assert abs(proj.std().item() - 256**-0.5) < 0.1 * 256**-0.5
    steps = torch.cat([layer.step_size for layer in head.layers])
    assert not torch.all(steps == steps[0])  # random N(0, 1), not constant
    assert 0.015 < head.cls_emb.std() < 0.025  # trunc. normal, std 0.02
    for norm in (head.decoder_norm, head.mask_norm, head.layers[0].norm):
        assert torch.all(norm.weight == 1) and torch.all(norm.bias == 0)
    # the segmentor's init_weights (mmseg default path) keeps that init
    model = build_segmentor()
    model.init_weights()
    proj = model.decode_head.layers[0].proj
    assert abs(proj.std().item() - D**-0.5) < 0.25 * D**-0.5


def test_fewer_params_than_segmenter_head():
    depict = build_head(
        in_channels=384, embed_dims=384, num_heads=6, num_classes=150)
    segmenter = MODELS.build(
        dict(
            type='SegmenterMaskTransformerHead',
            in_channels=384,
            channels=384,
            embed_dims=384,
            num_layers=LAYERS,
            num_heads=6,
            num_classes=150))

    def count(m):
        return sum(p.numel() for p in m.parameters())

    assert count(depict) < 0.25 * count(segmenter), (count(depict),
                                                     count(segmenter))


def test_upsample_to_padded_size_then_crop():
    head = build_head().eval()
    logits = torch.randn(1, N_CLS, 4, 5)
    expected = F.interpolate(
        logits, size=(64, 80), mode='bilinear',
        align_corners=False)[..., :56, :72]
    out = head.predict_by_feat(logits, [dict(img_shape=(56, 72))])
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    out = head.predict_by_feat(logits,
                               [dict(img_shape=(50, 60), pad_shape=(56, 72))])
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    with pytest.raises(ValueError, match='patch_size'):
        head.predict_by_feat(logits, [dict(img_shape=(28, 36))])


def test_loss_is_mmseg_loss_of_the_cropped_logits_with_one_resize(
        monkeypatch):
    """loss_by_feat = mmseg BaseDecodeHead's loss and accuracy on the
    upsampled-and-cropped logits, with a single interpolation (no second,
    identity resize of the full-resolution logits)."""
    from mmseg.models.decode_heads.decode_head import BaseDecodeHead
    head = build_head(ignore_index=255).train()
    logits = torch.randn(2, N_CLS, 4, 5, requires_grad=True)
    labels = torch.randint(N_CLS, (2, 1, 56, 72))
    labels[:, :, :8] = 255
    samples = []
    for lab in labels:
        sample = SegDataSample()
        sample.gt_sem_seg = PixelData(data=lab)
        samples.append(sample)
    calls = []
    interpolate = F.interpolate
    monkeypatch.setattr(F, 'interpolate',
                        lambda *a, **k: calls.append(1) or interpolate(*a, **k))
    ours = head.loss_by_feat(logits, samples)
    assert len(calls) == 1
    monkeypatch.setattr(F, 'interpolate', interpolate)
    cropped = head.upsample_and_crop(logits, (56, 72))
    ref = BaseDecodeHead.loss_by_feat(head, cropped, samples)
    assert ours.keys() == ref.keys() and 'loss_ce' in ours
    for key in ours:
        torch.testing.assert_close(ours[key], ref[key], rtol=0, atol=0)


def test_a_few_training_steps_reduce_the_loss():
    torch.manual_seed(0)
    head = build_head(mode='ca')
    head.train()
    feats = torch.randn(4, D, 4, 4)
    # labels: a fixed linear readout of the features, at pixel resolution
    readout = torch.randn(N_CLS, D)
    labels = torch.einsum('cd,bdhw->bchw', readout, feats).argmax(1)
    labels = labels.repeat_interleave(P, 1).repeat_interleave(P, 2)
    labels = labels[:, :56, :60]  # not a multiple of the patch size
    samples = [
        SegDataSample(gt_sem_seg=PixelData(data=label[None]))
        for label in labels
    ]
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        optimizer.zero_grad()
        loss = head.loss([feats], samples, train_cfg=None)['loss_ce']
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


# -------------------------------------------------------------- converter


def test_convert_unknown_key_is_named():
    sd = official_state_dict()
    sd['decoder.net.layers.0.fn.extra'] = torch.zeros(1)
    sd['encoder.blocks.0.ls1.gamma'] = torch.zeros(1)
    with pytest.raises(ValueError, match='ls1.gamma'):
        convert_depict(sd)
    del sd['encoder.blocks.0.ls1.gamma']
    with pytest.raises(ValueError, match=r'net\.layers\.0\.fn\.extra'):
        convert_depict(sd)
    with pytest.raises(ValueError, match='stray'):
        convert_depict(dict(official_state_dict(), stray=torch.zeros(1)))


@pytest.mark.parametrize('key', [
    'decoder.mask_norm.bias', 'decoder.net.layers.1.fn.step_size',
    'encoder.blocks.0.attn.qkv.bias', 'encoder.pos_embed'
])
def test_convert_missing_key_is_named(key):
    sd = official_state_dict()
    del sd[key]
    with pytest.raises(ValueError, match='missing') as err:
        convert_depict(sd)
    assert key.split('.', 1)[1] in str(err.value)


def test_convert_refuses_distilled_deit():
    sd = official_state_dict()
    sd['encoder.dist_token'] = torch.zeros(1, 1, D)
    with pytest.raises(ValueError, match='distill'):
        convert_depict(sd)


@pytest.mark.parametrize('mode', ['sa', 'ca'])
def test_convert_infers_settings(mode):
    sd = official_state_dict(mode, grid=(4, 4))
    new, info = convert_depict({'model': sd, 'n_cls': N_CLS, 'epoch': 3})
    head = info['decode_head']
    assert info['layout'] == 'segmentor'
    assert (head['mode'], head['num_layers'], head['num_heads'],
            head['embed_dims'], head['num_classes']) == (mode, LAYERS, HEADS,
                                                         D, N_CLS)
    bb = info['backbone']
    assert (bb['patch_size'], bb['num_layers'], bb['img_size'],
            bb['mlp_ratio']) == (P, 2, (64, 64), 4)
    assert not any(k.startswith('backbone.head') for k in new)
    # the printed config values build a model the checkpoint loads into
    hints = config_hints(info)
    assert hints['backbone']['num_heads'] is None  # width 32: not standard
    hints['backbone']['num_heads'] = 2
    model = MODELS.build(dict(type='EncoderDecoder', **hints))
    load_state_dict_strict(model, new)
    # a non-square training grid cannot be told apart: no img_size guess
    _, info = convert_depict(official_state_dict(mode, grid=(4, 6)))
    assert info['backbone']['grid'] is None
    # decoder-only checkpoints (bare MaskTransformer keys)
    bare = {k[8:]: v for k, v in sd.items() if k.startswith('decoder.')}
    new, info = convert_depict(bare)
    assert info['layout'] == 'decoder' and info['decode_head']['mode'] == mode
    load_state_dict_strict(build_head(mode=mode), new)


@pytest.mark.parametrize('mode', ['sa', 'ca'])
def test_round_trip_original_to_mmseg_strict(mode, tmp_path, capsys):
    sd = official_state_dict(mode)
    new, _ = convert_depict({'model': sd})
    model = build_segmentor(mode)
    load_state_dict_strict(model, new)
    im = torch.randn(1, 3, 40, 90)  # padded to 48x96: pos-embed resized
    metas = [dict(img_shape=(40, 90))]
    with torch.no_grad():
        expected = model.encode_decode(im, metas)
    assert expected.shape == (1, N_CLS, 40, 90)
    # every converted tensor is the original one under its new name
    state = model.state_dict()
    for key, value in sd.items():
        if map_depict_key(key) is not None:
            assert torch.equal(state[map_depict_key(key)], value), key

    # the command-line tool: weights_only read, {'state_dict', 'meta'};
    # once as a subprocess from the repo root (no installation needed)
    src, dst = tmp_path / 'checkpoint.pth', tmp_path / 'out' / 'mmseg.pth'
    torch.save({'model': sd, 'n_cls': N_CLS, 'epoch': 3}, src)
    if mode == 'sa':
        proc = subprocess.run(
            [sys.executable, str(TOOL),
             str(src), str(dst)],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True)
        assert proc.returncode == 0, proc.stderr
        stdout = proc.stdout
    else:
        stdout = run_tool(capsys, str(src), str(dst))
    assert f"'mode': '{mode}'" in stdout
    assert 'patch_bias=True' in stdout
    saved = torch.load(dst, weights_only=True)
    assert set(saved) == {'state_dict', 'meta'}
    fresh = build_segmentor(mode)
    load_checkpoint(fresh, str(dst), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(
            fresh.encode_decode(im, metas), expected, rtol=0, atol=0)


def test_strict_load_names_the_fix():
    new, _ = convert_depict(official_state_dict('ca'))
    with pytest.raises(ValueError) as err:
        load_state_dict_strict(build_segmentor('sa', patch_bias=False), new)
    message = str(err.value)
    assert 'backbone.patch_embed.projection.bias' in message
    assert 'patch_bias=True' in message
    assert "mode='ca'" in message
    with pytest.raises(ValueError, match='img_size'):
        load_state_dict_strict(build_segmentor('ca', img_size=(64, 96)), new)


def test_tool_reports_bad_checkpoint(tmp_path, capsys):
    src = tmp_path / 'bad.pth'
    sd = official_state_dict()
    sd['decoder.unknown'] = torch.zeros(1)
    torch.save({'model': sd}, src)
    with pytest.raises(SystemExit, match='decoder.*unknown'):
        run_tool(capsys, str(src), str(tmp_path / 'out.pth'))
    assert not (tmp_path / 'out.pth').exists()
