"""Transformer MLP that does not keep its GELU output for backward.

In a ViT block ``fc2(gelu(fc1(x)))`` autograd keeps two (B, N, 4D) tensors
per layer: the GELU input (for the GELU gradient) and the GELU output (for
``fc2``'s weight gradient). :class:`LeanMlp` keeps only the GELU input and
recomputes the GELU output in backward: one element-wise GELU more per
layer, and 4 fewer (B, N, D)-sized tensors of the ~16-28 a ViT layer keeps
(float32 / AMP).
Values and gradients are those of timm's ``Mlp`` up to float rounding;
parameter names (``fc1``, ``fc2``) are the same, so checkpoints map 1:1.
"""
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from timm.layers import Mlp
from torch import Tensor, nn

from .flags import set_module_flag


class _GeluLinear(torch.autograd.Function):
    """``F.linear(gelu(h), weight, bias)`` saving ``h`` but not ``gelu(h)``.

    Under autocast the forward's ``F.linear`` runs in the autocast dtype;
    backward recomputes in the dtype the forward product had and returns
    gradients in each input's own dtype (as autograd does through
    autocast's casts).
    """

    @staticmethod
    def forward(ctx, h: Tensor, weight: Tensor, bias):
        out = F.linear(F.gelu(h), weight, bias)
        ctx.save_for_backward(h, weight)
        ctx.has_bias = bias is not None
        ctx.bias_dtype = None if bias is None else bias.dtype
        ctx.compute_dtype = out.dtype
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        h, weight = ctx.saved_tensors
        dt = ctx.compute_dtype
        grad_out = grad_out.to(dt)
        act = F.gelu(h).to(dt)  # recomputed instead of kept
        g2 = grad_out.reshape(-1, grad_out.shape[-1])
        grad_weight = grad_bias = None
        if ctx.needs_input_grad[1]:
            grad_weight = (g2.t() @ act.reshape(-1, act.shape[-1])).to(
                weight.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = g2.sum(0).to(ctx.bias_dtype)
        grad_h = None
        if ctx.needs_input_grad[0]:
            grad_act = (grad_out @ weight.to(dt)).to(h.dtype)
            grad_h = torch.ops.aten.gelu_backward(grad_act, h)
        return grad_h, grad_weight, grad_bias


class LeanMlp(Mlp):
    """timm ``Mlp`` (fc1 -> GELU -> fc2) that recomputes the GELU output in
    backward instead of keeping it (see the module docstring).

    The lean path runs when gradients are being recorded, ``recompute_act``
    is True (switched off by :func:`keep_mlp_activations`, the original-code
    baseline) and the MLP is the plain one: exact ``nn.GELU``, no dropout
    between the layers (or eval mode), no hidden norm, linear layers.
    Anything else takes timm's forward. x: (..., D) -> (..., D_out).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.recompute_act = True
        self._lean_ok = (type(self.act) is nn.GELU
                         and self.act.approximate == 'none'
                         and isinstance(self.norm, nn.Identity)
                         and isinstance(self.fc2, nn.Linear))

    def forward(self, x: Tensor) -> Tensor:
        if not (self.recompute_act and self._lean_ok
                and torch.is_grad_enabled()
                and (self.drop1.p == 0 or not self.training)):
            return super().forward(x)
        h = self.fc1(x)
        x = _GeluLinear.apply(h, self.fc2.weight, self.fc2.bias)
        return self.drop2(x)


@contextmanager
def keep_mlp_activations(model: nn.Module):
    """Every :class:`LeanMlp` in ``model`` keeps its GELU output (timm's
    plain ``Mlp`` behaviour, as the original code) inside the context.

    Yields:
        int: the number of MLPs switched.
    """
    mlps = [m for m in model.modules() if isinstance(m, LeanMlp)]
    with set_module_flag(mlps, 'recompute_act', False) as n:
        yield n


__all__ = ['LeanMlp', 'keep_mlp_activations']
