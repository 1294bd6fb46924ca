"""liruiwen/TransCAM checkpoints -> wsss_zoo ``CAMSegmentor`` state dicts.

``train_TransCAM.py`` saves ``model.module.state_dict()`` of
``network/conformer.py::Net`` (a bare state dict; ``{'model': sd}`` /
``{'state_dict': sd}`` and ``module.`` prefixes are accepted too). Our
modules keep the original names, so the mapping is a prefix:

==========================================  ================================
original                                    wsss_zoo
==========================================  ================================
``cls_token``, ``conv1``, ``bn1``,          ``backbone.<same>`` (Conformer)
``conv_1.*``, ``trans_patch_conv.*``,
``trans_1.*``, ``conv_trans_{i}.*``,
``trans_norm.*``
``conv_cls_head.*`` (C + 1, C3, 3, 3),      ``cam_head.<same>``
``trans_cls_head.*`` (C + 1, D)             (TransCAMHead, num_classes = C)
==========================================  ================================

The architecture is read from the weights (channel ratio, D, depth, MLP
ratio, qkv bias, classes); the number of heads is not stored (default
``embed_dims // 64``: 6 for Conformer-Ti/S, 9 for -B). The expected keys
and shapes come from the model built on the ``meta`` device; unknown,
missing or mis-shaped keys raise ``ValueError`` listing them (only BatchNorm
``num_batches_tracked`` counters may be absent: they are set to 0 and
reported).
"""
import re
from collections import OrderedDict
from typing import Dict, Optional

import torch
import torch.nn as nn
from torch import Tensor

from .mctformer import unwrap_state_dict

_HEAD_PREFIXES = ('conv_cls_head.', 'trans_cls_head.')
_CONV_TRANS = re.compile(r'^conv_trans_(\d+)\.')
_REQUIRED = ('cls_token', 'conv_1.conv3.weight', 'trans_1.mlp.fc1.weight',
             'conv_cls_head.weight')


def _infer_meta(sd: Dict[str, Tensor], num_heads: Optional[int]) -> dict:
    missing = [k for k in _REQUIRED if k not in sd]
    if missing:
        raise ValueError(
            'not a TransCAM Conformer checkpoint (wrong model?): missing '
            f'keys {missing}; first keys found: {sorted(sd)[:20]}')
    embed_dims = int(sd['cls_token'].shape[-1])
    blocks = sorted({int(m.group(1)) for m in map(_CONV_TRANS.match, sd)
                     if m})
    num_layers = blocks[-1] if blocks else 1
    head = sd['conv_cls_head.weight']
    if head.ndim != 4:
        raise ValueError(
            f'conv_cls_head.weight has shape {tuple(head.shape)}: this is an '
            'ImageNet Conformer (Linear head), not a TransCAM checkpoint; '
            "use it as init: backbone=dict(pretrained='PATH')")
    heads_given = num_heads is not None
    if num_heads is None:
        num_heads = max(1, embed_dims // 64)
    return dict(
        source='liruiwen/TransCAM',
        num_classes=int(head.shape[0]) - 1,
        in_channels=int(sd['conv1.weight'].shape[1]) if 'conv1.weight'
        in sd else 3,
        channel_ratio=int(sd['conv_1.conv3.weight'].shape[0]) / 64,
        cnn_out_channels=int(head.shape[1]),
        embed_dims=embed_dims,
        num_layers=int(num_layers),
        num_heads=int(num_heads),
        num_heads_source='given' if heads_given else
        'assumed embed_dims // 64 (not stored in the weights)',
        mlp_ratio=sd['trans_1.mlp.fc1.weight'].shape[0] / embed_dims,
        qkv_bias='trans_1.attn.qkv.bias' in sd)


def transcam_model_cfg(meta: dict) -> dict:
    """``backbone``, ``cam_head`` and ``refiners`` configs for a meta."""
    return dict(
        backbone=dict(
            type='Conformer',
            in_channels=meta['in_channels'],
            channel_ratio=meta['channel_ratio'],
            embed_dims=meta['embed_dims'],
            num_layers=meta['num_layers'],
            num_heads=meta['num_heads'],
            mlp_ratio=meta['mlp_ratio'],
            qkv_bias=meta['qkv_bias']),
        cam_head=dict(
            type='TransCAMHead',
            num_classes=meta['num_classes'],
            in_channels=meta['cnn_out_channels'],
            embed_dims=meta['embed_dims']),
        refiners=[dict(type='TransCAMRefiner', mode='transcam')])


def _expected_shapes(meta: dict) -> Dict[str, torch.Size]:
    """Keys and shapes of backbone + head, built without allocating."""
    from mmseg.registry import MODELS
    import wsss_zoo.models  # noqa: F401  (registers the modules)
    cfg = transcam_model_cfg(meta)
    with torch.device('meta'):
        model = nn.ModuleDict(dict(backbone=MODELS.build(cfg['backbone']),
                                   cam_head=MODELS.build(cfg['cam_head'])))
    return {k: v.shape for k, v in model.state_dict().items()}


def convert_transcam(ckpt, num_heads: Optional[int] = None) -> dict:
    """Convert an original TransCAM (``network/conformer.py::Net``) file.

    Args:
        ckpt (dict): a state dict (or ``{'model' | 'state_dict': sd}``).
        num_heads (int, optional): attention heads (not in the weights).
            None: ``embed_dims // 64``.

    Returns:
        dict: ``state_dict`` (``backbone.*``, ``cam_head.*``) and ``meta``
        (architecture for :func:`transcam_model_cfg`, filled keys).

    Raises:
        ValueError: unknown / missing / mis-shaped keys (listed), an
            ImageNet Conformer (Linear head) or another model.
    """
    sd = unwrap_state_dict(ckpt)
    meta = _infer_meta(sd, num_heads)
    if meta['embed_dims'] % meta['num_heads']:
        raise ValueError(f"num_heads={meta['num_heads']} does not divide "
                         f"embed_dims={meta['embed_dims']}")
    if meta['num_layers'] % 3:
        raise ValueError(f"the checkpoint has {meta['num_layers']} blocks, "
                         'not a multiple of 3: not a Conformer layout')
    out = OrderedDict()
    for k, v in sd.items():
        prefix = 'cam_head.' if k.startswith(_HEAD_PREFIXES) else 'backbone.'
        out[prefix + k] = v
    expected = _expected_shapes(meta)
    filled = []
    for k in expected:
        if k not in out and k.endswith('.num_batches_tracked'):
            out[k] = torch.tensor(0, dtype=torch.long)
            filled.append(k)
    missing = [k for k in expected if k not in out]
    unknown = [k for k in out if k not in expected]
    mismatched = [f'{k} {tuple(out[k].shape)} vs {tuple(expected[k])}'
                  for k in expected if k in out
                  and out[k].shape != expected[k]]
    if missing or unknown or mismatched:
        raise ValueError(
            'TransCAM checkpoint does not match the Conformer layout '
            f'inferred from it ({transcam_model_cfg(meta)["backbone"]}): '
            f'missing keys {missing}; unknown keys {unknown}; shape '
            f'mismatches {mismatched}')
    meta['filled_keys'] = filled
    ordered = OrderedDict((k, out[k]) for k in expected)
    return dict(state_dict=ordered, meta=meta)


__all__ = ['convert_transcam', 'transcam_model_cfg']
