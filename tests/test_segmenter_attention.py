"""``SegmenterSelfAttention`` / ``SegmenterVisionTransformer``: torch's
``nn.MultiheadAttention`` parameters, Segmenter's op order on the explicit
path, SDPA on the fused path, torch's code for everything else."""
import torch
import torch.nn.functional as F
from mmengine.registry import init_default_scope
from torch import nn

from mmseg.registry import MODELS
from wsss_zoo.models.utils.attention import (SegmenterSelfAttention,
                                             materialize_all_attention)

D, H, N, B = 96, 3, 7, 2  # head width 32: scale 32**-0.5 is not exact


def pair(dropout=0.0):
    torch.manual_seed(0)
    ref = nn.MultiheadAttention(D, H, dropout=dropout)
    ours = nn.MultiheadAttention(D, H, dropout=dropout)
    ours.load_state_dict(ref.state_dict())
    assert SegmenterSelfAttention.convert(ours) == 1
    return ref, ours


def segmenter_attention(mha, x):
    """Segmenter's ``Attention.forward`` on (B, N, D) tokens."""
    Bx, Nx, C = x.shape
    qkv = F.linear(x, mha.in_proj_weight, mha.in_proj_bias).reshape(
        Bx, Nx, 3, H, C // H).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    attn = ((q @ k.transpose(-2, -1)) * (C // H)**-0.5).softmax(dim=-1)
    out = (attn @ v).transpose(1, 2).reshape(Bx, Nx, C)
    return mha.out_proj(out)


def test_explicit_path_is_segmenters_op_order_bit_for_bit():
    _, ours = pair()
    x = torch.randn(B, N, D)
    seq = x.transpose(0, 1)  # (N, B, D) as mmcv passes it
    with materialize_all_attention(ours):
        out, weights = ours(seq, seq, seq)
    assert weights is None
    assert torch.equal(out.transpose(0, 1), segmenter_attention(ours, x))
    assert ours.fused_attn  # restored


def test_fused_and_explicit_match_torch_module():
    ref, ours = pair()
    x = torch.randn(N, B, D, requires_grad=True)
    expected = ref(x, x, x)[0]
    for fused in (True, False):
        ours.fused_attn = fused
        out = ours(x, x, x)[0]
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
        g_ours, = torch.autograd.grad(out.sum(), x)
        g_ref, = torch.autograd.grad(expected.sum(), x, retain_graph=True)
        torch.testing.assert_close(g_ours, g_ref, rtol=1e-5, atol=1e-6)


def test_other_calls_go_to_torch():
    ref, ours = pair()
    q = torch.randn(N, B, D)
    kv = torch.randn(N + 2, B, D)
    torch.testing.assert_close(ours(q, kv, kv)[0], ref(q, kv, kv)[0])
    mask = torch.zeros(B, N, dtype=torch.bool)
    mask[:, -2:] = True
    out, weights = ours(q, q, q, key_padding_mask=mask)
    torch.testing.assert_close(out, ref(q, q, q, key_padding_mask=mask)[0])
    assert weights is not None  # torch's path, weights as asked


def test_attention_dropout_only_in_training():
    _, ours = pair(dropout=0.5)
    x = torch.randn(N, B, D)
    ours.eval()
    torch.testing.assert_close(ours(x, x, x)[0], ours(x, x, x)[0])
    ours.train()
    assert not torch.allclose(ours(x, x, x)[0], ours(x, x, x)[0])


def test_segmenter_vit_has_mmseg_keys_and_outputs():
    init_default_scope('mmseg')
    cfg = dict(img_size=(32, 48), patch_size=16, embed_dims=D, num_layers=2,
               num_heads=H, mlp_ratio=2, out_indices=(1, ), qkv_bias=True,
               patch_bias=True, with_cls_token=True, final_norm=True,
               norm_cfg=dict(type='LN', eps=1e-5),
               interpolate_mode='bilinear')
    torch.manual_seed(0)
    mmseg_vit = MODELS.build(dict(type='VisionTransformer', **cfg))
    ours = MODELS.build(dict(type='SegmenterVisionTransformer', **cfg))
    ours.load_state_dict(mmseg_vit.state_dict())  # strict: same keys
    mmseg_vit.eval()  # (mmseg's ViT.train() returns None: no chaining)
    ours.eval()
    n = sum(isinstance(m, SegmenterSelfAttention) for m in ours.modules())
    assert n == 2
    x = torch.randn(2, 3, 32, 64)  # other size: pos-embed resized
    with torch.no_grad():
        torch.testing.assert_close(ours(x)[0], mmseg_vit(x)[0], rtol=1e-5,
                                   atol=1e-5)
