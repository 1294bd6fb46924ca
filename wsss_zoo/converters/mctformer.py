"""xulianuwa/MCTformer checkpoints -> wsss_zoo ``CAMSegmentor`` state dicts.

The original saves ``{'model': state_dict}`` (``main.py``) with the keys of
its ``models.py`` classes. Mapping (children of the stage-1 segmentor are
``backbone``, ``cam_head``, ``refiners``):

==========================================  ================================
original                                    wsss_zoo
==========================================  ================================
``cls_token``, ``patch_embed.proj.*``,      ``backbone.<same>``
``blocks.i.{norm1,attn.qkv,attn.proj,
norm2,mlp.fc1,mlp.fc2}.*``, ``norm.*``
``pos_embed`` (V1, V2)                      ``backbone.pos_embed``
``pos_embed_cls``, ``pos_embed_pat`` (+)    ``backbone.<same>``
``head.*`` Conv2d 3x3 (V2, +)               ``cam_head.patch_cam.*``
``head.*`` Linear (V1, never used)          dropped, reported in meta
``pos_embed`` (+, never used)               dropped, reported in meta
==========================================  ================================

``norm.*`` is never applied by the original but the encoder keeps it, so it
is carried. Unknown keys and missing keys raise ``ValueError`` listing them.
"""
import re
from collections import OrderedDict
from typing import Dict, Optional

from torch import Tensor

VERSIONS = ('v1', 'v2', 'plus')
BACKBONE_TYPES = dict(v1='MCTformerV1', v2='MCTformerV2', plus='MCTformerPlus')
_BLOCK_KEY = re.compile(
    r'^blocks\.(\d+)\.(norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)'
    r'\.(weight|bias)$')
_BLOCK_PARTS = ('norm1', 'attn.qkv', 'attn.proj', 'norm2', 'mlp.fc1',
                'mlp.fc2')


def unwrap_state_dict(ckpt) -> Dict[str, Tensor]:
    """``{'model': sd}`` / ``{'state_dict': sd}`` / sd -> sd (``module.``
    prefixes stripped)."""
    if not isinstance(ckpt, dict):
        raise TypeError(f'checkpoint must be a dict, got {type(ckpt)}')
    for key in ('model', 'state_dict'):
        if isinstance(ckpt.get(key), dict):
            ckpt = ckpt[key]
            break
    if ckpt and all(k.startswith('module.') for k in ckpt):
        ckpt = {k[len('module.'):]: v for k, v in ckpt.items()}
    return dict(ckpt)


def infer_version(sd: Dict[str, Tensor]) -> Optional[str]:
    """'plus' (pos_embed_cls / pos_embed_pat), 'v2' (conv head), 'v1'
    (Linear head) or None (no head: V1 or V2 cannot be told apart)."""
    if 'pos_embed_cls' in sd or 'pos_embed_pat' in sd:
        return 'plus'
    head = sd.get('head.weight')
    if head is None:
        return None
    if head.ndim == 4:
        return 'v2'
    if head.ndim == 2:
        return 'v1'
    raise ValueError(
        f'head.weight has shape {tuple(head.shape)}: a V1 with '
        "last_opt='fc' (grouped Conv1d head) is not supported")


_KNOWN_KEY = re.compile(
    r'^(cls_token|pos_embed(_cls|_pat)?|patch_embed\.proj\.(weight|bias)|'
    r'norm\.(weight|bias)|head\.(weight|bias))$')


def _check_is_mctformer(sd: Dict[str, Tensor]) -> None:
    """Fail with the missing and unexpected keys if ``sd`` is not an
    MCTformer state dict at all (e.g. a checkpoint of another model)."""
    required = ['cls_token', 'patch_embed.proj.weight']
    missing = [k for k in required if k not in sd]
    if missing:
        unexpected = sorted(
            k for k in sd if not (_KNOWN_KEY.match(k) or _BLOCK_KEY.match(k)))
        raise ValueError(
            'not an MCTformer checkpoint (wrong model?): missing keys '
            f'{missing}; unexpected keys ({len(unexpected)}): '
            f'{unexpected[:30]}{" ..." if len(unexpected) > 30 else ""}')


def convert_mctformer(ckpt,
                      version: Optional[str] = None,
                      num_heads: Optional[int] = None) -> dict:
    """Convert an original MCTformer V1 / V2 / MCTformer+ checkpoint.

    Args:
        ckpt (dict): ``{'model': sd}`` or a bare state dict.
        version (str, optional): 'v1', 'v2' or 'plus'; inferred when None
            (an explicit value that contradicts the weights raises).
        num_heads (int, optional): attention heads (not stored in the
            weights). None: ``embed_dims // 64`` (DeiT-T/S/B convention).

    Returns:
        dict: ``state_dict`` (``backbone.*``, ``cam_head.*``) and ``meta``
        (version, backbone_type, inferred sizes, dropped keys with reasons).

    Raises:
        ValueError: unknown / missing keys (listed), bad version.
    """
    sd = unwrap_state_dict(ckpt)
    _check_is_mctformer(sd)
    inferred = infer_version(sd)
    if version is not None and version not in VERSIONS:
        raise ValueError(f'version must be one of {VERSIONS}, got {version!r}')
    if version is None:
        if inferred is None:
            raise ValueError('cannot tell MCTformer V1 from V2 without a '
                             "head.weight key: pass version='v1' or 'v2'")
        version = inferred
    elif inferred is not None and inferred != version:
        raise ValueError(f'version={version!r} but the checkpoint looks like '
                         f'{inferred!r} (head / pos-embed keys)')
    if 'cls_token' not in sd or 'patch_embed.proj.weight' not in sd:
        raise ValueError('missing keys: ' + str(sorted(
            {'cls_token', 'patch_embed.proj.weight'} - set(sd))))

    _, num_classes, embed_dims = sd['cls_token'].shape
    patch_size = sd['patch_embed.proj.weight'].shape[-1]
    block_ids = sorted({int(m.group(1)) for m in map(_BLOCK_KEY.match, sd)
                        if m})
    num_layers = block_ids[-1] + 1 if block_ids else 0
    qkv_bias = 'blocks.0.attn.qkv.bias' in sd

    expected = ['cls_token', 'patch_embed.proj.weight',
                'patch_embed.proj.bias', 'norm.weight', 'norm.bias']
    expected += (['pos_embed_cls', 'pos_embed_pat'] if version == 'plus'
                 else ['pos_embed'])
    for i in range(num_layers):
        for part in _BLOCK_PARTS:
            for kind in ('weight', 'bias'):
                if part == 'attn.qkv' and kind == 'bias' and not qkv_bias:
                    continue
                expected.append(f'blocks.{i}.{part}.{kind}')
    head_keys = ['head.weight', 'head.bias']
    if version != 'v1':
        expected += head_keys
    optional_dropped = {}
    if version == 'v1':
        optional_dropped.update({
            k: 'V1 Linear head, never used by the original forward'
            for k in head_keys
        })
    if version == 'plus':
        optional_dropped['pos_embed'] = (
            'parent 1-class pos_embed, never used by MCTformer+')

    missing = [k for k in expected if k not in sd]
    unknown = [k for k in sd if k not in expected and k not in
               optional_dropped]
    if missing or unknown or num_layers == 0:
        raise ValueError(
            f'MCTformer {version} checkpoint does not match the expected '
            f'layout: missing keys {missing or "[] (no blocks)"}, unknown '
            f'keys {unknown}')

    out = OrderedDict()
    for k in expected:
        if k.startswith('head.'):
            out['cam_head.patch_cam.' + k[len('head.'):]] = sd[k]
        else:
            out['backbone.' + k] = sd[k]
    dropped = {k: why for k, why in optional_dropped.items() if k in sd}

    pos = sd['pos_embed_pat'] if version == 'plus' else sd['pos_embed']
    num_patches = pos.shape[1] - (0 if version == 'plus' else num_classes)
    grid = int(round(num_patches**0.5))
    if grid * grid != num_patches:
        raise ValueError(f'patch pos-embed has {num_patches} rows, not a '
                         'square grid')
    heads_given = num_heads is not None
    if num_heads is None:
        num_heads = max(1, embed_dims // 64)
    mlp_hidden = sd['blocks.0.mlp.fc1.weight'].shape[0]
    meta = dict(
        source='xulianuwa/MCTformer',
        version=version,
        backbone_type=BACKBONE_TYPES[version],
        num_classes=int(num_classes),
        embed_dims=int(embed_dims),
        num_layers=int(num_layers),
        num_heads=int(num_heads),
        num_heads_source='given' if heads_given else
        'assumed embed_dims // 64 (not stored in the weights)',
        img_size=int(grid * patch_size),
        patch_size=int(patch_size),
        in_channels=int(sd['patch_embed.proj.weight'].shape[1]),
        mlp_ratio=mlp_hidden / embed_dims,
        qkv_bias=qkv_bias,
        dropped_keys=dropped)
    return dict(state_dict=out, meta=meta)


def mctformer_model_cfg(meta: dict) -> dict:
    """``backbone`` and ``cam_head`` config dicts matching a converted meta."""
    backbone = dict(
        type=meta['backbone_type'],
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
        type='MCTHead',
        num_classes=meta['num_classes'],
        in_channels=meta['embed_dims'],
        version=meta['version'])
    return dict(backbone=backbone, cam_head=cam_head)


__all__ = [
    'convert_mctformer', 'mctformer_model_cfg', 'infer_version',
    'unwrap_state_dict'
]
