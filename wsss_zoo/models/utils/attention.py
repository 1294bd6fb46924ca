"""timm transformer blocks whose attention map can be captured per layer.

CAM methods (MCTformer, TS-CAM, WeakTr) read the post-softmax attention of
some layers. Materialising a (B, heads, N, N) map in every layer on every
step is what the original research code does; here a layer runs the fused
``F.scaled_dot_product_attention`` unless its ``capture`` flag is on, and only
then builds the explicit softmax map and keeps it in ``attn_map``.

Parameter names are timm's (``norm1``, ``attn.qkv``, ``attn.proj``,
``norm2``, ``mlp.fc1``, ``mlp.fc2``), i.e. those of DeiT / the original
MCTformer and TS-CAM ViTs, so their checkpoints map 1:1.
"""
from contextlib import contextmanager
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import torch.nn.functional as F
from timm.models.vision_transformer import Attention, Block
from torch import Tensor, nn

from .flags import set_module_flag
from .mlp import LeanMlp, keep_mlp_activations


class CaptureAttention(Attention):
    """timm ``Attention`` with a per-instance capture switch.

    ``capture = False`` (default): fused SDPA (or timm's explicit path when
    fused attention is disabled globally), nothing kept.
    ``capture = True``: explicit ``softmax(q k^T * scale)``; the map before
    attention dropout is kept in ``attn_map``, (B, heads, N, N), as the
    original ViTs of MCTformer / TS-CAM return it.
    ``materialize = True`` (set by :func:`materialize_all_attention`): the
    explicit path even when not captured, as the original code runs every
    layer (the map is kept in ``attn_map`` only when captured).
    ``keep_head_mean = True`` (set by :func:`keep_head_mean_attention`): a
    captured map is averaged over heads as soon as it is made and kept as
    (B, 1, N, N), for consumers that only use the head mean (the full map
    of a layer then lives only while that layer runs). Ignored under
    ``materialize`` (the original-code baseline keeps full maps).

    Args: as timm's ``Attention`` (``dim``, ``num_heads``, ``qkv_bias``,
        ``attn_drop``, ``proj_drop``, ...).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)  # sets fused_attn (timm default)
        self.capture = False
        self.materialize = False
        self.keep_head_mean = False
        self.attn_map: Optional[Tensor] = None

    def forward(self,
                x: Tensor,
                attn_mask: Optional[Tensor] = None,
                is_causal: bool = False) -> Tensor:
        """x (Tensor): tokens, (B, N, D). Returns: Tensor, (B, N, D)."""
        if not (self.capture or self.materialize):
            self.attn_map = None
            return super().forward(x, attn_mask=attn_mask, is_causal=is_causal)
        if (attn_mask is not None or is_causal
                or getattr(self, 'gate', None) is not None):
            raise NotImplementedError(
                'CaptureAttention: capture supports plain self-attention only '
                '(no attn_mask, is_causal or gated attention)')
        B, N, _ = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        # (q k^T) * scale, in the order of the original MCTformer / TS-CAM
        # ViTs (timm scales q first; the two agree to float rounding).
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        # (B, heads, N, N), post-softmax, pre-dropout
        if self.capture:
            # the materialised baseline keeps full maps, as the original
            reduce = self.keep_head_mean and not self.materialize
            self.attn_map = attn.mean(dim=1, keepdim=True) if reduce else attn
        else:
            self.attn_map = None
        x = self.attn_drop(attn) @ v
        x = x.transpose(1, 2).reshape(B, N, self.attn_dim)
        x = self.proj(self.norm(x))
        return self.proj_drop(x)


class CaptureBlock(Block):
    """timm pre-norm ``Block`` built on :class:`CaptureAttention`.

    ``x + drop_path(attn(norm1(x)))`` then ``x + drop_path(mlp(norm2(x)))``
    (exact GELU), as timm's / DeiT's block. The MLP is a
    :class:`~wsss_zoo.models.utils.mlp.LeanMlp` (timm's ``Mlp`` that
    recomputes its GELU output in backward instead of keeping it).
    Args: as timm's ``Block``.
    """

    def __init__(self, *args, **kwargs):
        kwargs.setdefault('attn_layer', CaptureAttention)
        kwargs.setdefault('mlp_layer', LeanMlp)
        super().__init__(*args, **kwargs)
        if not isinstance(self.attn, CaptureAttention):
            raise TypeError('CaptureBlock needs a CaptureAttention '
                            f'attn_layer, got {type(self.attn).__name__}')


def _same_view(a: Tensor, b: Tensor) -> bool:
    """Whether two tensors view the same memory the same way (mmcv passes
    self-attention's query / key / value as separate transposed views)."""
    return a is b or (a.data_ptr() == b.data_ptr() and a.shape == b.shape
                      and a.stride() == b.stride() and a.dtype == b.dtype)


class SegmenterSelfAttention(nn.MultiheadAttention):
    """``nn.MultiheadAttention`` computing self-attention as Segmenter's ViT
    (and WeakTr's / DEPICT's copies of it) does.

    mmcv's ``MultiheadAttention`` brick (used by mmseg's ``VisionTransformer``
    and ``SegmenterMaskTransformerHead``) calls torch's module with
    ``need_weights=True``: an explicit map ``softmax((q * scale) k^T)`` plus
    a head-averaged copy that mmcv throws away. Segmenter computes
    ``softmax((q k^T) * scale)``; the two round differently when ``scale =
    head_dim^-0.5`` is not a power of two (e.g. head_dim 32). Here:

    * ``fused_attn = True`` (default): ``F.scaled_dot_product_attention``;
    * ``fused_attn = False`` (:func:`materialize_all_attention`, the parity
      tests): the explicit map in Segmenter's order, bit-identical to it.

    Same parameters and names as torch's module (``in_proj_weight``,
    ``in_proj_bias``, ``out_proj``), so checkpoints and converters are
    unchanged. Inputs (N, B, D) as mmcv passes them (``batch_first=False``);
    returns ``(out (N, B, D), None)``. Anything else (masks, cross-attention,
    ``batch_first``, separate q/k/v weights, bias_k / zero-attn) goes to
    torch's implementation.
    """

    fused_attn = True

    @classmethod
    def convert(cls, module: nn.Module) -> int:
        """Turn every plain ``nn.MultiheadAttention`` inside ``module`` into
        this class in place (parameters, buffers and hooks are kept).

        Returns:
            int: how many were converted.
        """
        n = 0
        for m in module.modules():
            if type(m) is nn.MultiheadAttention:
                m.__class__ = cls
                n += 1
        return n

    def forward(self, query, key, value, key_padding_mask=None,
                need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        if (not (_same_view(query, key) and _same_view(key, value))
                or self.batch_first
                or key_padding_mask is not None or attn_mask is not None
                or is_causal or not self._qkv_same_embed_dim
                or self.bias_k is not None or self.add_zero_attn
                or query.dim() != 3):
            return super().forward(
                query, key, value, key_padding_mask=key_padding_mask,
                need_weights=need_weights, attn_mask=attn_mask,
                average_attn_weights=average_attn_weights,
                is_causal=is_causal)
        N, B, D = query.shape
        H, hd = self.num_heads, self.head_dim
        qkv = F.linear(query, self.in_proj_weight, self.in_proj_bias)
        # (N, B, 3D) -> 3 x (B, H, N, hd)
        q, k, v = qkv.reshape(N, B, 3, H, hd).permute(2, 1, 3, 0, 4).unbind(0)
        p = self.dropout if self.training else 0.0
        if self.fused_attn:
            x = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
        else:
            attn = ((q @ k.transpose(-2, -1)) * hd**-0.5).softmax(dim=-1)
            x = F.dropout(attn, p=p) @ v
        x = x.permute(2, 0, 1, 3).reshape(N, B, D)  # (N, B, H*hd)
        return self.out_proj(x), None


def normalize_layer_indices(layers: Optional[Iterable[int]],
                            num_layers: int) -> List[int]:
    """Sorted unique non-negative layer indices; negatives count from the end.

    Raises:
        ValueError: an index outside ``[-num_layers, num_layers)``.
    """
    if layers is None:
        return []
    out = set()
    for idx in layers:
        if not isinstance(idx, int) or isinstance(idx, bool):
            raise TypeError(f'layer indices must be int, got {idx!r}')
        if not -num_layers <= idx < num_layers:
            raise ValueError(
                f'layer index {idx} out of range for {num_layers} layers: '
                f'use 0..{num_layers - 1} or -{num_layers}..-1')
        out.add(idx % num_layers)
    return sorted(out)


def run_blocks(blocks: Sequence[CaptureBlock],
               x: Tensor,
               capture_layers: Optional[Iterable[int]] = None,
               per_block_hook=None) -> Tuple[Tensor, Dict[int, Tensor]]:
    """Run ``blocks`` on tokens ``x``, capturing only the listed layers.

    Args:
        blocks (Sequence[CaptureBlock]): the transformer layers.
        x (Tensor): tokens, (B, N, D).
        capture_layers (Iterable[int], optional): layers whose attention map
            is kept (negative indices allowed). None: none (all fused).
        per_block_hook (callable, optional): ``hook(i, x)`` called with the
            output tokens of every block.

    Returns:
        tuple: tokens (B, N, D) after the last block and a dict
        ``{layer index: (B, heads, N, N) post-softmax map}``.
    """
    wanted = set(normalize_layer_indices(capture_layers, len(blocks)))
    attn = {}
    try:
        for i, blk in enumerate(blocks):
            blk.attn.capture = i in wanted
            x = blk(x)
            if i in wanted:
                attn[i] = blk.attn.attn_map
            blk.attn.capture = False
            blk.attn.attn_map = None
            if per_block_hook is not None:
                per_block_hook(i, x)
    finally:
        for blk in blocks:
            blk.attn.capture = False
            blk.attn.attn_map = None
    return x, attn


@contextmanager
def materialize_all_attention(model: nn.Module):
    """Run every attention layer of ``model`` on its explicit softmax path.

    The baseline of the original research code, which builds the (B, heads,
    N, N) map in every layer on every call, training included. Inside the
    context every :class:`CaptureAttention` takes its explicit path, and any
    other module with a ``fused_attn`` flag (timm ``Attention``, DEPICT's
    subspace attention) has it set to False. Outputs, losses and gradients
    are those of the fused path up to float rounding; only time and memory
    differ. The flags are restored on exit, also after an exception.

    Args:
        model (nn.Module): any module tree.

    Yields:
        int: the number of attention modules switched.
    """
    capture = [m for m in model.modules() if isinstance(m, CaptureAttention)]
    other = [
        m for m in model.modules() if not isinstance(m, CaptureAttention)
        and isinstance(getattr(m, 'fused_attn', None), bool)
    ]
    with set_module_flag(capture, 'materialize', True) as n1, \
            set_module_flag(other, 'fused_attn', False) as n2:
        yield n1 + n2


@contextmanager
def keep_head_mean_attention(model: nn.Module, enabled: bool = True):
    """Keep only the head mean of every captured attention map in ``model``.

    For CAM consumers that average the heads anyway (MCTformer's
    class-to-patch attention and patch affinity, TransCAM's refiner): their
    ``attn[i].mean(dim=1)`` of the (B, 1, N, N) map is the same tensor, and
    ``num_heads`` times less memory is held across layers. Flags are
    restored on exit.

    Args:
        model (nn.Module): any module tree.
        enabled (bool): False: do nothing (a no-op context).
    """
    capture = [m for m in model.modules()
               if enabled and isinstance(m, CaptureAttention)]
    with set_module_flag(capture, 'keep_head_mean', True) as n:
        yield n


@contextmanager
def original_code_paths(model: nn.Module):
    """Every fast path of ``model`` off: the original research code's way.

    :func:`materialize_all_attention` (explicit softmax map in every layer)
    and :func:`~wsss_zoo.models.utils.mlp.keep_mlp_activations` (MLPs keep
    their GELU output for backward). The baseline of ``tools/benchmark.py``
    and of the fast-path equivalence tests. Flags are restored on exit.

    Yields:
        int: the number of attention modules switched.
    """
    with materialize_all_attention(model) as switched, \
            keep_mlp_activations(model):
        yield switched


def head_mean(attn: Tensor) -> Tensor:
    """Average a (B, heads, N, N) map over heads -> (B, N, N)."""
    return attn.mean(dim=1)


__all__ = [
    'CaptureAttention', 'CaptureBlock', 'SegmenterSelfAttention',
    'normalize_layer_indices',
    'run_blocks', 'head_mean', 'materialize_all_attention',
    'keep_head_mean_attention', 'original_code_paths'
]
