"""WeakTr stage-2 (gradient clipping decoder) parity against fixtures
produced by the official ``OnlineRetraining/segm`` code.

Every case rebuilds the official Segmenter as mmseg
``EncoderDecoder(SegmenterVisionTransformer, WeakTrGCDHead)`` from the
fixture's constructor kwargs, converts the official state_dict and loads it
strictly, switches attention to its explicit path (the original's op order;
the default fused path is checked against it separately), then compares: decoder masks, Segmenter logits (``seg_pred``), per-pixel CE,
the clipping statistics (global mean, window means, thresholds), the clip
mask (EXACT), the clipped loss map, the back-propagated loss through mmseg's
``model.loss`` and its gradients (w.r.t. ``seg_pred``, the decoder masks and
the image), the not-yet-clipping loss, and the test-time two-output decoder.

Tolerance: the fixture's ``max|ours - golden| <= rtol * max|golden|``.
"""
import pytest
import torch
import torch.nn.functional as F
from golden_utils import golden_params, load_case, rel_err
from mmengine.config import ConfigDict
from mmengine.structures import PixelData

from mmseg.registry import MODELS
from mmseg.structures import SegDataSample
from wsss_zoo.converters.weaktr_gcd import (convert_weaktr_gcd,
                                            load_state_dict_strict)
from wsss_zoo.models.losses.gradient_clipping_loss import \
    gradient_clip_loss_map
from wsss_zoo.models.utils.attention import SegmenterSelfAttention

CASES = golden_params('weaktr_gcd')


class _Checker:
    """Collects every comparison so a failure lists all bad tensors."""

    def __init__(self, case):
        self.rtol = float(case['tolerance']['rtol_vs_tensor_max'])
        self.errors, self.failures = {}, []

    def __call__(self, name, ours, golden):
        err = rel_err(ours, golden)
        self.errors[name] = err
        if not err <= self.rtol:
            self.failures.append(f'{name}: {err:.3e} > {self.rtol:.1e}')

    def exact(self, name, ours, golden):
        ok = ours.shape == golden.shape and torch.equal(ours, golden)
        self.errors[name] = 0.0 if ok else float('nan')
        if not ok:
            n = (ours != golden).sum().item() if ours.shape == golden.shape \
                else 'shape'
            self.failures.append(f'{name}: not identical ({n} differ)')

    def assert_ok(self):
        print({k: f'{v:.2e}' for k, v in self.errors.items()})
        assert not self.failures, '\n'.join(self.failures)


def _build(case, start_value, fused=False):
    enc = case['constructor']['encoder']['kwargs']
    dec = case['constructor']['decoder']['kwargs']
    window = case['inputs']['gc_patch_size']
    d = enc['d_model']
    if enc['d_ff'] % d or dec['d_ff'] % dec['d_model']:
        pytest.fail('d_ff is not a multiple of d_model')
    model = MODELS.build(
        dict(
            type='EncoderDecoder',
            backbone=dict(
                type='SegmenterVisionTransformer',
                img_size=tuple(enc['image_size']),
                patch_size=enc['patch_size'],
                in_channels=enc.get('channels', 3),
                embed_dims=d,
                num_layers=enc['n_layers'],
                num_heads=enc['n_heads'],
                mlp_ratio=enc['d_ff'] // d,
                out_indices=(enc['n_layers'] - 1, ),
                qkv_bias=True,
                patch_bias=True,
                drop_rate=enc['dropout'],
                attn_drop_rate=enc['dropout'],
                drop_path_rate=enc['drop_path_rate'],
                with_cls_token=True,
                final_norm=True,
                norm_cfg=dict(type='LN', eps=1e-5),
                interpolate_mode='bilinear'),
            decode_head=dict(
                type='WeakTrGCDHead',
                in_channels=dec['d_encoder'],
                embed_dims=dec['d_model'],
                num_layers=dec['n_layers'],
                num_heads=dec['n_heads'],
                mlp_ratio=dec['d_ff'] // dec['d_model'],
                num_classes=dec['n_cls'],
                patch_size=dec['patch_size'],
                drop_rate=dec['dropout'],
                attn_drop_rate=dec['dropout'],
                drop_path_rate=dec['drop_path_rate'],
                ignore_index=case['inputs']['ignore_index'],
                loss_decode=dict(
                    type='GradientClippingLoss',
                    start_value=start_value,
                    window_size=window)),
            test_cfg=ConfigDict(mode='whole')))
    state_dict, info = convert_weaktr_gcd(case['state_dict'])
    assert info['layout'] == 'segmentor'
    assert info['decode_head']['num_classes'] == dec['n_cls']
    assert info['decode_head']['num_layers'] == dec['n_layers']
    assert info['backbone']['patch_size'] == enc['patch_size']
    load_state_dict_strict(model, state_dict)
    attn = [m for m in model.modules()
            if isinstance(m, SegmenterSelfAttention)]
    assert len(attn) == enc['n_layers'] + dec['n_layers']
    for m in attn:
        m.fused_attn = fused
    # dropout / drop-path are 0 in the fixture: train mode == eval mode;
    # train mode is what the loss runs in
    return model.train()


def _samples(case):
    image = case['inputs']['image']
    label = case['inputs']['pseudo_label'].long()
    B, _, H, W = image.shape
    samples = []
    for i in range(B):
        sample = SegDataSample(
            metainfo=dict(img_shape=(H, W), ori_shape=(H, W),
                          pad_shape=(H, W)))
        sample.gt_sem_seg = PixelData(data=label[i][None])
        samples.append(sample)
    return samples


def _loss_with_grads(model, image, samples):
    """mmseg ``model.loss`` with the gradients of the decoder masks and of
    the logits the loss module receives (= Segmenter's ``seg_pred``)."""
    head = model.decode_head
    store = {}
    forward = head.forward

    def recording_forward(inputs):
        masks = forward(inputs)
        masks.retain_grad()
        store['decoder_masks'] = masks
        return masks

    def keep_logits(module, args):
        args[0].retain_grad()
        store['seg_pred'] = args[0]

    head.forward = recording_forward
    handle = head.loss_decode.register_forward_pre_hook(keep_logits)
    try:
        losses = model.loss(image, samples)
    finally:
        handle.remove()
        del head.forward
    loss = losses[f'decode.{head.loss_decode.loss_name}']
    loss.backward()
    return losses, loss, store


@pytest.mark.parametrize('case_file', CASES)
def test_weaktr_gcd_parity(case_file):
    case = load_case(case_file)
    check = _Checker(case)
    inputs, golden = case['inputs'], case['outputs']
    label = inputs['pseudo_label'].long()
    window = inputs['gc_patch_size']
    ignore = inputs['ignore_index']

    # ---- forward, clip statistics, clipped loss and gradients (clipping on)
    model = _build(case, inputs['start_value_clip'])
    image = inputs['image'].clone().requires_grad_(True)
    B, _, H, W = image.shape
    losses, loss, store = _loss_with_grads(model, image, _samples(case))
    seg_pred = store['seg_pred']
    check('decoder_masks', store['decoder_masks'], golden['decoder_masks'])
    check('seg_pred', seg_pred, golden['seg_pred'])
    ce_map = F.cross_entropy(
        seg_pred.detach(), label, ignore_index=ignore, reduction='none')
    check('ce_map', ce_map, golden['ce_map'])

    clip = golden['clip']
    result = gradient_clip_loss_map(ce_map, inputs['start_value_clip'],
                                    window)
    assert result.active, 'the fixture clips with start_value_clip'
    check('clip.global_mean_loss', result.mean_loss,
          torch.tensor(clip['global_mean_loss']))
    check('clip.local_mean', result.local_mean, clip['local_mean'])
    check('clip.threshold_local', result.threshold_local,
          clip['threshold_local'])
    check('clip.threshold_map', result.threshold_map, clip['threshold_map'])
    check.exact('clip.clip_mask', result.clip_mask, clip['clip_mask'])
    check('clip.clipped_loss_map', result.loss_map, clip['clipped_loss_map'])
    check('clip.loss', loss, clip['loss'])
    check('clip.grad_seg_pred', seg_pred.grad, clip['grad_seg_pred'])
    check('clip.grad_decoder_masks', store['decoder_masks'].grad,
          clip['grad_decoder_masks'])
    check('clip.grad_image', image.grad, clip['grad_image'])
    checks = case['checks']
    assert int(clip['clip_mask'].sum()) == checks['n_clipped_pixels']
    assert int((label == ignore).sum()) == checks['n_ignored_pixels']
    # zero gradient exactly on the clipped and the ignored pixels
    dead = clip['clip_mask'] | (label == ignore)
    grad_norm = seg_pred.grad.abs().sum(dim=1)
    assert torch.all(grad_norm[dead] == 0)
    assert torch.all(grad_norm[~dead] > 0)
    # logged statistics of the loss module
    assert losses['decode.gc_active'].item() == 1.0
    check('clip.gc_mean_ce', losses['decode.gc_mean_ce'],
          torch.tensor(clip['global_mean_loss']))
    valid = label != ignore
    frac = (clip['clip_mask'] & valid).sum() / valid.sum()
    check('clip.gc_clipped_frac', losses['decode.gc_clipped_frac'], frac)

    # ---- start value above the batch mean: plain mean CE (no clipping)
    model = _build(case, inputs['start_value_noclip'])
    image = inputs['image'].clone().requires_grad_(True)
    losses, loss, store = _loss_with_grads(model, image, _samples(case))
    assert losses['decode.gc_active'].item() == 0.0
    noclip = golden['noclip']
    check('noclip.loss', loss, noclip['loss'])
    check('noclip.grad_seg_pred_maxabs', store['seg_pred'].grad.abs().max(),
          torch.tensor(noclip['grad_seg_pred_maxabs']))

    # ---- mmseg predict() reproduces seg_pred; the two-output decoder
    model.eval()
    metas = [dict(img_shape=(H, W), ori_shape=(H, W))] * B
    with torch.no_grad():
        check('predict/seg_pred', model.encode_decode(inputs['image'], metas),
              golden['seg_pred'])
        feats = model.extract_feat(inputs['image'])
        masks1, masks2 = model.decode_head.forward_multi(feats)
        check('multi_decoder_masks1', masks1, golden['multi_decoder_masks1'])
        check('multi_decoder_masks2', masks2, golden['multi_decoder_masks2'])

        # a bare decoder checkpoint converts to a WeakTrGCDHead alone
        dec_sd = {
            k[len('decoder.'):]: v
            for k, v in case['state_dict'].items()
            if k.startswith('decoder.')
        }
        head_sd, info = convert_weaktr_gcd(dec_sd)
        assert info['layout'] == 'decoder'
        bare = MODELS.build(
            dict(
                type='WeakTrGCDHead',
                in_channels=info['decode_head']['in_channels'],
                embed_dims=info['decode_head']['embed_dims'],
                num_layers=info['decode_head']['num_layers'],
                num_heads=case['constructor']['decoder']['kwargs']['n_heads'],
                num_classes=info['decode_head']['num_classes'],
                patch_size=case['constructor']['decoder']['kwargs']
                ['patch_size'],
                drop_rate=0.0,
                attn_drop_rate=0.0)).eval()
        load_state_dict_strict(bare, head_sd)
        check('bare_decoder/decoder_masks', bare(feats),
              golden['decoder_masks'])

    covered = {
        'decoder_masks', 'seg_pred', 'ce_map', 'multi_decoder_masks1',
        'multi_decoder_masks2'
    }
    tensors = {k for k, v in golden.items() if torch.is_tensor(v)}
    assert tensors <= covered, f'fixture tensors not compared: ' \
        f'{tensors - covered}'
    compared_clip = {
        'global_mean_loss', 'local_mean', 'threshold_local', 'threshold_map',
        'clip_mask', 'clipped_loss_map', 'loss', 'grad_seg_pred',
        'grad_decoder_masks', 'grad_image', 'replication_max_abs_err'
    }
    assert set(clip) <= compared_clip, set(clip) - compared_clip
    assert set(noclip) <= {'loss', 'grad_seg_pred_maxabs'}
    check.assert_ok()


@pytest.mark.parametrize('case_file', CASES)
def test_weaktr_gcd_fused_attention_matches_explicit(case_file, monkeypatch):
    """The default (fused SDPA, one call per layer) attention gives the
    explicit path's logits, loss and gradients up to float rounding."""
    case = load_case(case_file)
    inputs = case['inputs']
    calls = []
    sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(F, 'scaled_dot_product_attention',
                        lambda *a, **k: calls.append(1) or sdpa(*a, **k))
    n_layers = sum(case['constructor'][part]['kwargs']['n_layers']
                   for part in ('encoder', 'decoder'))
    out = {}
    for fused in (False, True):
        model = _build(case, inputs['start_value_clip'], fused=fused)
        image = inputs['image'].clone().requires_grad_(True)
        calls.clear()
        _, loss, store = _loss_with_grads(model, image, _samples(case))
        assert len(calls) == (n_layers if fused else 0)
        out[fused] = dict(seg_pred=store['seg_pred'].detach(), loss=loss,
                          grad_image=image.grad,
                          grad_seg_pred=store['seg_pred'].grad)
    for name in out[False]:
        err = rel_err(out[True][name], out[False][name])
        assert err < 1e-4, f'{name}: fused vs explicit {err:.2e}'

