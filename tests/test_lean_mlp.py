"""``LeanMlp``: timm's ``Mlp`` values and gradients, less memory kept for
backward (the GELU output is recomputed), and the plain path wherever the
lean one would not be exact."""
import pytest
import torch
from timm.layers import Mlp
from timm.models.vision_transformer import Block

from wsss_zoo.models.utils.attention import CaptureBlock, original_code_paths
from wsss_zoo.models.utils.mlp import LeanMlp, keep_mlp_activations

D, HID = 24, 96


def pair(**kwargs):
    torch.manual_seed(0)
    plain = Mlp(D, HID, **kwargs)
    lean = LeanMlp(D, HID, **kwargs)
    lean.load_state_dict(plain.state_dict())
    return plain, lean


def run(mlp, x):
    x = x.clone().requires_grad_(True)
    mlp.zero_grad(set_to_none=True)
    out = mlp(x)
    (out * torch.linspace(-1, 1, out.shape[-1])).sum().backward()
    grads = {n: p.grad.clone() for n, p in mlp.named_parameters()}
    return out.detach(), x.grad.clone(), grads


def saved_bytes(mlp, x):
    """Bytes of every tensor autograd keeps for backward in ``mlp(x)``
    (distinct storages)."""
    seen = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    x = x.clone().requires_grad_(True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        mlp(x).sum().backward()
    return sum(seen.values())


def test_same_values_and_gradients_as_timm_mlp():
    plain, lean = pair()
    x = torch.randn(3, 7, D)
    out_p, gx_p, g_p = run(plain, x)
    out_l, gx_l, g_l = run(lean, x)
    torch.testing.assert_close(out_l, out_p, rtol=0, atol=0)
    torch.testing.assert_close(gx_l, gx_p, rtol=1e-6, atol=1e-7)
    assert g_p.keys() == g_l.keys()
    for name in g_p:
        torch.testing.assert_close(g_l[name], g_p[name], rtol=1e-6,
                                   atol=1e-7, msg=name)


def test_keeps_the_gelu_output_out_of_the_saved_tensors():
    plain, lean = pair()
    x = torch.randn(4, 9, D)
    hidden = 4 * 9 * HID * 4  # one (B, N, 4D) float32 tensor
    assert saved_bytes(plain, x) - saved_bytes(lean, x) == hidden
    with keep_mlp_activations(lean) as n:
        assert n == 1
        assert saved_bytes(lean, x) == saved_bytes(plain, x)
    assert lean.recompute_act


def test_autocast_bf16_matches_timm_mlp_under_autocast():
    plain, lean = pair()
    x = torch.randn(2, 5, D)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out_p, gx_p, g_p = run(plain, x)
        out_l, gx_l, g_l = run(lean, x)
    assert out_l.dtype == out_p.dtype == torch.bfloat16
    torch.testing.assert_close(out_l, out_p, rtol=0, atol=0)
    assert gx_l.dtype == gx_p.dtype == torch.float32
    torch.testing.assert_close(gx_l, gx_p, rtol=1e-2, atol=1e-3)
    for name in g_p:
        assert g_l[name].dtype == torch.float32
        torch.testing.assert_close(g_l[name], g_p[name], rtol=1e-2,
                                   atol=1e-3, msg=name)


@pytest.mark.parametrize('kwargs', [
    dict(drop=0.1),  # dropout between fc1 and fc2 in training
    dict(act_layer=torch.nn.ReLU),
    dict(norm_layer=torch.nn.LayerNorm),
])
def test_falls_back_to_timm_where_lean_is_not_exact(kwargs):
    plain, lean = pair(**kwargs)
    x = torch.randn(2, 5, D)
    assert saved_bytes(lean, x) == saved_bytes(plain, x)
    torch.manual_seed(1)
    out_l = lean(x)
    torch.manual_seed(1)
    torch.testing.assert_close(out_l, plain(x), rtol=0, atol=0)


def test_dropout_mlp_in_eval_mode_is_lean():
    plain, lean = pair(drop=0.1)
    plain.eval(), lean.eval()
    x = torch.randn(2, 5, D)
    assert saved_bytes(lean, x) < saved_bytes(plain, x)


def test_capture_block_uses_it_and_loads_timm_block_weights():
    torch.manual_seed(0)
    ref = Block(D, 4, qkv_bias=True)
    blk = CaptureBlock(D, 4, qkv_bias=True)
    assert isinstance(blk.mlp, LeanMlp)
    blk.load_state_dict(ref.state_dict())  # strict: same names
    x = torch.randn(2, 6, D)
    _, gx_ref, g_ref = run(ref, x)
    _, gx, g = run(blk, x)
    torch.testing.assert_close(gx, gx_ref, rtol=1e-5, atol=1e-6)
    for name in g_ref:
        torch.testing.assert_close(g[name], g_ref[name], rtol=1e-5,
                                   atol=1e-6, msg=name)
    with original_code_paths(blk):
        assert blk.attn.materialize and not blk.mlp.recompute_act
    assert not blk.attn.materialize and blk.mlp.recompute_act
