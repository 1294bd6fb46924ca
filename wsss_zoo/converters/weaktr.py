"""hustvl/WeakTr stage-1 checkpoints -> wsss_zoo ``CAMSegmentor`` state dicts.

The original ``main.py`` saves ``{'model': state_dict, 'epoch': int[,
'miou': numpy.float64]}`` (``checkpoint_best_mIoU.pth``) with the keys of
``models.py::WeakTr`` at HEAD (the "V3" adaptive attention fusion).
Mapping (children of the stage-1 segmentor are ``backbone``, ``cam_head``):

==============================================  ============================
original                                        wsss_zoo
==============================================  ============================
``cls_token`` (1, C, D), ``pos_embed``          ``backbone.<same>``
(1, C + N, D), ``patch_embed.proj.*``,
``blocks.i.{norm1,attn.qkv,attn.proj,norm2,
mlp.fc1,mlp.fc2}.*``, ``norm.*`` (never used)
``head.*`` Conv2d 3x3 (C, D, 3, 3)              ``cam_head.coarse_conv.*``
``adaptive_attention_fusion.attn_head_ffn.*``   ``cam_head.aaf.<same>``
``adaptive_attention_fusion.attn_feat_ffn.*``   ``cam_head.aaf.<same>``
==============================================  ============================

Checkpoints of the first AAF version (``adaptive_attention_fusion.fc.*``,
arXiv v1) have a different fusion and are refused with that explanation;
the original loads them ``strict=False`` and silently leaves the fusion
random. Unknown and missing keys raise ``ValueError`` listing them. Sizes
are read from the weights; heads follow from the AAF width (L x heads).
"""
import re
from collections import OrderedDict
from typing import Dict, Optional

from torch import Tensor

from .mctformer import unwrap_state_dict

_BLOCK_KEY = re.compile(
    r'^blocks\.(\d+)\.(norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)'
    r'\.(weight|bias)$')
_BLOCK_PARTS = ('norm1', 'attn.qkv', 'attn.proj', 'norm2', 'mlp.fc1',
                'mlp.fc2')
_AAF = 'adaptive_attention_fusion.'
_AAF_KEYS = ('attn_head_ffn.0.weight', 'attn_head_ffn.2.weight',
             'attn_feat_ffn.0.weight', 'attn_feat_ffn.0.bias',
             'attn_feat_ffn.1.weight', 'attn_feat_ffn.1.bias')


def is_weaktr_stage1(sd: Dict[str, Tensor]) -> bool:
    """True for a WeakTr stage-1 state dict (it has AAF keys)."""
    return any(k.startswith(_AAF) for k in sd)


def _reduction(channels: int, hidden: int) -> float:
    """A reduction r with ``int(channels / r) == hidden`` (the original
    value is not stored; any r giving the same layer sizes is equivalent).
    """
    r = channels / hidden
    if int(channels / r) != hidden:
        r = channels / (hidden + 0.5)
    return r


def convert_weaktr(ckpt, num_heads: Optional[int] = None) -> dict:
    """Convert an original WeakTr stage-1 (V3 AAF) checkpoint.

    Args:
        ckpt (dict): ``{'model': sd, ...}`` or a bare state dict.
        num_heads (int, optional): attention heads; checked against the
            value implied by the AAF width when given.

    Returns:
        dict: ``state_dict`` (``backbone.*``, ``cam_head.*``) and ``meta``
        (sizes read from the weights, the AAF reductions, source).

    Raises:
        ValueError: V1 AAF layout, unknown / missing keys (listed),
            inconsistent sizes.
    """
    sd = unwrap_state_dict(ckpt)
    if any(k.startswith(_AAF + 'fc.') for k in sd):
        raise ValueError(
            'this is a WeakTr V1 checkpoint (adaptive_attention_fusion.fc.*, '
            'arXiv v1, commit 3547b87): its fusion pools the attention maps '
            'themselves and cannot be loaded into the V3 WeakTrHead; use a V3 '
            'checkpoint (README of hustvl/WeakTr since 2023-08-29)')
    if 'cls_token' not in sd or 'patch_embed.proj.weight' not in sd:
        raise ValueError(
            'not a WeakTr stage-1 checkpoint: missing keys ' + str(sorted(
                {'cls_token', 'patch_embed.proj.weight'} - set(sd))) +
            f' (first keys: {list(sd)[:6]}); a stage-2 (Segmenter) '
            'checkpoint needs the weaktr_gcd converter')
    _, num_classes, embed_dims = sd['cls_token'].shape
    patch_size = sd['patch_embed.proj.weight'].shape[-1]
    block_ids = sorted({int(m.group(1)) for m in map(_BLOCK_KEY.match, sd)
                        if m})
    num_layers = block_ids[-1] + 1 if block_ids else 0
    qkv_bias = 'blocks.0.attn.qkv.bias' in sd

    expected = ['cls_token', 'pos_embed', 'patch_embed.proj.weight',
                'patch_embed.proj.bias', 'norm.weight', 'norm.bias',
                'head.weight', 'head.bias']
    for i in range(num_layers):
        for part in _BLOCK_PARTS:
            for kind in ('weight', 'bias'):
                if part == 'attn.qkv' and kind == 'bias' and not qkv_bias:
                    continue
                expected.append(f'blocks.{i}.{part}.{kind}')
    expected += [_AAF + k for k in _AAF_KEYS]
    missing = [k for k in expected if k not in sd]
    unknown = [k for k in sd if k not in expected]
    if missing or unknown or num_layers == 0:
        raise ValueError(
            'WeakTr stage-1 checkpoint does not match the expected layout: '
            f'missing keys {missing or "[] (no blocks)"}, unknown keys '
            f'{unknown}')
    if sd['head.weight'].ndim != 4:
        raise ValueError(
            f'head.weight has shape {tuple(sd["head.weight"].shape)}; WeakTr '
            'has a 3x3 conv head (C, D, 3, 3)')

    # AAF sizes: channels = L * heads, feature width = D / heads
    aaf_hidden, channels = sd[_AAF + 'attn_head_ffn.0.weight'].shape
    feat_hidden, head_dims = sd[_AAF + 'attn_feat_ffn.0.weight'].shape
    heads = channels // num_layers
    if heads * num_layers != channels or heads * head_dims != embed_dims:
        raise ValueError(
            f'AAF sizes do not fit the encoder: {channels} fused maps for '
            f'{num_layers} layers and {head_dims} features per head for '
            f'embed dims {embed_dims} (expected L * heads and D / heads)')
    if num_heads is not None and num_heads != heads:
        raise ValueError(f'num_heads={num_heads} given but the AAF weights '
                         f'imply {heads} heads ({channels} maps / '
                         f'{num_layers} layers)')

    out = OrderedDict()
    for k in expected:
        if k.startswith('head.'):
            out['cam_head.coarse_conv.' + k[len('head.'):]] = sd[k]
        elif k.startswith(_AAF):
            out['cam_head.aaf.' + k[len(_AAF):]] = sd[k]
        else:
            out['backbone.' + k] = sd[k]

    num_patches = sd['pos_embed'].shape[1] - num_classes
    grid = int(round(num_patches**0.5))
    if grid * grid != num_patches:
        raise ValueError(f'patch pos-embed has {num_patches} rows, not a '
                         'square grid')
    meta = dict(
        source='hustvl/WeakTr stage 1 (V3 AAF)',
        num_classes=int(num_classes),
        embed_dims=int(embed_dims),
        num_layers=int(num_layers),
        num_heads=int(heads),
        img_size=int(grid * patch_size),
        patch_size=int(patch_size),
        in_channels=int(sd['patch_embed.proj.weight'].shape[1]),
        mlp_ratio=sd['blocks.0.mlp.fc1.weight'].shape[0] / embed_dims,
        qkv_bias=qkv_bias,
        reduction=_reduction(int(channels), int(aaf_hidden)),
        feat_reduction=_reduction(int(head_dims), int(feat_hidden)),
        pool=None,  # not stored in the weights ('max' for released models)
        epoch=ckpt.get('epoch') if isinstance(ckpt, dict) else None)
    return dict(state_dict=out, meta=meta)


def weaktr_model_cfg(meta: dict, pool: str = 'max') -> dict:
    """``backbone`` and ``cam_head`` config dicts for a converted meta.

    Args:
        meta (dict): ``meta`` of :func:`convert_weaktr`.
        pool (str): AAF pooling, not stored in the weights. Default: 'max'
            (``--pool-type max`` of the released models).
    """
    backbone = dict(
        type='WeakTrViT',
        img_size=meta['img_size'],
        patch_size=meta['patch_size'],
        in_channels=meta['in_channels'],
        embed_dims=meta['embed_dims'],
        num_layers=meta['num_layers'],
        num_heads=meta['num_heads'],
        mlp_ratio=meta['mlp_ratio'],
        qkv_bias=meta['qkv_bias'],
        num_classes=meta['num_classes'])
    cam_head = dict(
        type='WeakTrHead',
        num_classes=meta['num_classes'],
        in_channels=meta['embed_dims'],
        num_layers=meta['num_layers'],
        num_heads=meta['num_heads'],
        reduction=meta['reduction'],
        feat_reduction=meta['feat_reduction'],
        pool=meta['pool'] or pool)
    return dict(backbone=backbone, cam_head=cam_head)


__all__ = ['convert_weaktr', 'weaktr_model_cfg', 'is_weaktr_stage1']
