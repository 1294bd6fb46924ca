"""vasgaowei/TS-CAM checkpoints -> wsss_zoo ``CAMSegmentor`` state dicts.

``tools_cam/train_cam.py`` saves ``{'epoch', 'state_dict', 'best_map'}``
whose ``state_dict`` comes from a DataParallel model (every key has the
``module.`` prefix); a bare state dict is accepted too. Mapping:

==========================================  ================================
original (``lib/models/deit.py::TSCAM``)    wsss_zoo
==========================================  ================================
``cls_token`` (1, 1, D), ``pos_embed``      ``backbone.<same>`` (DeiTCAM)
(1, 1 + N, D), ``patch_embed.proj.*``,
``blocks.i.{norm1,attn.qkv,attn.proj,
norm2,mlp.fc1,mlp.fc2}.*``, ``norm.*``
``head.weight`` (C, D, 3, 3), ``head.bias``  ``cam_head.semantic_conv.*``
==========================================  ================================

Every key is used; unknown or missing keys raise ``ValueError`` listing
them (no ``strict=False``).
"""
import re
from collections import OrderedDict
from typing import Dict

from torch import Tensor

from .mctformer import unwrap_state_dict

_BLOCK_KEY = re.compile(r'^blocks\.(\d+)\.')
_BLOCK_PARTS = ('norm1', 'attn.qkv', 'attn.proj', 'norm2', 'mlp.fc1',
                'mlp.fc2')


def _expected_keys(num_layers: int, qkv_bias: bool):
    keys = ['cls_token', 'pos_embed', 'patch_embed.proj.weight',
            'patch_embed.proj.bias']
    for i in range(num_layers):
        for part in _BLOCK_PARTS:
            keys.append(f'blocks.{i}.{part}.weight')
            if part != 'attn.qkv' or qkv_bias:
                keys.append(f'blocks.{i}.{part}.bias')
    return keys + ['norm.weight', 'norm.bias', 'head.weight', 'head.bias']


def convert_tscam(ckpt, num_heads=None) -> dict:
    """Convert an original TS-CAM (DeiT) checkpoint.

    Args:
        ckpt (dict): ``{'state_dict': sd, ...}`` (``module.`` prefixes are
            stripped) or a bare state dict.
        num_heads (int, optional): attention heads (not stored in the
            weights). None: ``embed_dims // 64`` (DeiT-T/S/B: 3/6/12).

    Returns:
        dict: ``state_dict`` (``backbone.*``, ``cam_head.*``) and ``meta``
        (inferred sizes for :func:`tscam_model_cfg`).

    Raises:
        ValueError: unknown / missing keys (listed) or a layout that is not
            TS-CAM's (several class tokens, a Linear head).
    """
    sd: Dict[str, Tensor] = unwrap_state_dict(ckpt)
    required = {'cls_token', 'pos_embed', 'patch_embed.proj.weight',
                'head.weight'}
    if not required <= set(sd):
        raise ValueError(
            'not a TS-CAM checkpoint: missing keys '
            f'{sorted(required - set(sd))} (found {len(sd)} keys, e.g. '
            f'{sorted(sd)[:5]})')
    _, n_cls, embed_dims = sd['cls_token'].shape
    if n_cls != 1:
        raise ValueError(
            f'cls_token has {n_cls} class tokens; TS-CAM has one (an '
            'MCTformer checkpoint? use tools/model_converters/'
            'mctformer2wsss.py)')
    head = sd['head.weight']
    if head.ndim != 4 or tuple(head.shape[1:]) != (embed_dims, 3, 3):
        raise ValueError(
            f'head.weight has shape {tuple(head.shape)}, expected the TS-CAM '
            f'3x3 conv (C, {embed_dims}, 3, 3); an ImageNet DeiT checkpoint '
            "(Linear head) initialises DeiTCAM via init_cfg=dict(type="
            "'Pretrained', checkpoint=...) instead")
    block_ids = {int(m.group(1)) for m in map(_BLOCK_KEY.match, sd) if m}
    num_layers = max(block_ids) + 1 if block_ids else 0
    qkv_bias = 'blocks.0.attn.qkv.bias' in sd
    expected = _expected_keys(num_layers, qkv_bias)
    missing = [k for k in expected if k not in sd]
    unknown = sorted(set(sd) - set(expected))
    if missing or unknown or num_layers == 0:
        raise ValueError(
            'TS-CAM checkpoint does not match the expected layout: missing '
            f'keys {missing or "[] (no blocks)"}, unknown keys {unknown}')

    out = OrderedDict()
    for k in expected:
        if k.startswith('head.'):
            out['cam_head.semantic_conv.' + k[len('head.'):]] = sd[k]
        else:
            out['backbone.' + k] = sd[k]

    num_patches = sd['pos_embed'].shape[1] - 1
    grid = int(round(num_patches**0.5))
    if grid * grid != num_patches:
        raise ValueError(f'pos_embed has {num_patches} patch rows, not a '
                         'square grid')
    patch_size = sd['patch_embed.proj.weight'].shape[-1]
    heads_given = num_heads is not None
    if num_heads is None:
        num_heads = max(1, embed_dims // 64)
    meta = dict(
        source='vasgaowei/TS-CAM',
        num_classes=int(head.shape[0]),
        embed_dims=int(embed_dims),
        num_layers=int(num_layers),
        num_heads=int(num_heads),
        num_heads_source='given' if heads_given else
        'assumed embed_dims // 64 (not stored in the weights)',
        img_size=int(grid * patch_size),
        patch_size=int(patch_size),
        in_channels=int(sd['patch_embed.proj.weight'].shape[1]),
        mlp_ratio=sd['blocks.0.mlp.fc1.weight'].shape[0] / embed_dims,
        qkv_bias=qkv_bias)
    return dict(state_dict=out, meta=meta)


def tscam_model_cfg(meta: dict) -> dict:
    """``backbone`` and ``cam_head`` config dicts matching a converted meta."""
    backbone = dict(
        type='DeiTCAM',
        img_size=meta['img_size'],
        patch_size=meta['patch_size'],
        in_channels=meta['in_channels'],
        embed_dims=meta['embed_dims'],
        num_layers=meta['num_layers'],
        num_heads=meta['num_heads'],
        mlp_ratio=meta['mlp_ratio'],
        qkv_bias=meta['qkv_bias'])
    cam_head = dict(
        type='TSCAMHead',
        num_classes=meta['num_classes'],
        in_channels=meta['embed_dims'])
    return dict(backbone=backbone, cam_head=cam_head)


__all__ = ['convert_tscam', 'tscam_model_cfg']
