"""Convert DEPICT checkpoints (Segmenter layout) to the mmseg layout.

Original: github.com/QishuaiWen/DEPICT (commit 6c66e2b), trained with
Segmenter's ``segm/train.py``, which saves ``{'model': state_dict,
'optimizer': ..., 'n_cls': ..., 'lr_scheduler': ..., 'epoch': ...}``.
``model`` holds ``encoder.*`` (Segmenter's ViT) and ``decoder.*`` (DEPICT's
``MaskTransformer``). The target is mmseg's
``EncoderDecoder(backbone=SegmenterVisionTransformer, decode_head=DEPICTHead)``
(mmseg ``VisionTransformer`` keys):

=====================================  =====================================
original (``encoder.``/``decoder.``)   mmseg (``backbone.``/``decode_head.``)
=====================================  =====================================
cls_token, pos_embed                   same
patch_embed.proj.{weight,bias}         patch_embed.projection.* (patch_bias)
blocks.{i}.norm1 / norm2               layers.{i}.ln1 / ln2
blocks.{i}.attn.qkv.weight / bias      layers.{i}.attn.attn.in_proj_weight /
                                       in_proj_bias
blocks.{i}.attn.proj                   layers.{i}.attn.attn.out_proj
blocks.{i}.mlp.fc1 / fc2               layers.{i}.ffn.layers.0.0 / 1
norm                                   ln1 (final_norm=True)
head.*                                 dropped (ImageNet classifier)
dist_token, head_dist.*                refused (mmseg ViT has no dist token)
cls_emb                                cls_emb
net|snet.layers.{i}.norm               layers.{i}.norm
net|snet.layers.{i}.fn.proj            layers.{i}.proj
net|snet.layers.{i}.fn.step_size       layers.{i}.step_size
cnet.layers.{j}.norm / fn.proj / ...   cross_layers.{j}.norm / proj / ...
decoder_norm / snorm / cnorm           decoder_norm / patch_norm / class_norm
mask_norm                              mask_norm
=====================================  =====================================

Every key must match a rule and every key the inferred model needs must be
present; otherwise a ``ValueError`` lists the offending keys.
"""
import math
import re
from collections import OrderedDict
from typing import Dict, Iterable, Optional, Tuple

import torch
import torch.nn as nn

_ENCODER_RULES = [
    (r'cls_token', 'cls_token'),
    (r'pos_embed', 'pos_embed'),
    (r'patch_embed\.proj\.(weight|bias)', r'patch_embed.projection.\1'),
    (r'blocks\.(\d+)\.norm([12])\.(weight|bias)', r'layers.\1.ln\2.\3'),
    (r'blocks\.(\d+)\.attn\.qkv\.(weight|bias)',
     r'layers.\1.attn.attn.in_proj_\2'),
    (r'blocks\.(\d+)\.attn\.proj\.(weight|bias)',
     r'layers.\1.attn.attn.out_proj.\2'),
    (r'blocks\.(\d+)\.mlp\.fc1\.(weight|bias)',
     r'layers.\1.ffn.layers.0.0.\2'),
    (r'blocks\.(\d+)\.mlp\.fc2\.(weight|bias)', r'layers.\1.ffn.layers.1.\2'),
    (r'norm\.(weight|bias)', r'ln1.\1'),
    (r'head\.(weight|bias)', None),  # ImageNet classifier: dropped
]
_DISTILLED = re.compile(r'(dist_token|head_dist\..*)')

_DECODER_RULES = [
    (r'cls_emb', 'cls_emb'),
    (r's?net\.layers\.(\d+)\.norm\.(weight|bias)', r'layers.\1.norm.\2'),
    (r's?net\.layers\.(\d+)\.fn\.(proj|step_size)', r'layers.\1.\2'),
    (r'cnet\.layers\.(\d+)\.norm\.(weight|bias)', r'cross_layers.\1.norm.\2'),
    (r'cnet\.layers\.(\d+)\.fn\.(proj|step_size)', r'cross_layers.\1.\2'),
    (r'decoder_norm\.(weight|bias)', r'decoder_norm.\1'),
    (r'snorm\.(weight|bias)', r'patch_norm.\1'),
    (r'cnorm\.(weight|bias)', r'class_norm.\1'),
    (r'mask_norm\.(weight|bias)', r'mask_norm.\1'),
]

# standard ViT widths -> heads (not stored in weights: qkv is (3D, D))
_VIT_HEADS = {192: 3, 384: 6, 768: 12, 1024: 16}
_WB = ('weight', 'bias')


def _map_keys(state_dict, rules, prefix: str):
    """Rename with the first matching rule; returns (mapped, unknown)."""
    mapped, unknown = OrderedDict(), []
    for key, value in state_dict.items():
        for pattern, target in rules:
            if re.fullmatch(pattern, key):
                if target is not None:
                    mapped[prefix + re.sub(pattern, target, key)] = value
                break
        else:
            unknown.append(key)
    return mapped, unknown


def map_depict_key(key: str) -> Optional[str]:
    """The mmseg name of one original DEPICT key (None if dropped).

    ``encoder.*`` -> ``backbone.*``, ``decoder.*`` -> ``decode_head.*``; a
    key without those prefixes is a bare decoder key (-> ``DEPICTHead``
    name). Useful for per-parameter tensors (e.g. gradients).

    Raises:
        ValueError: the key matches no rule (or is a distillation key).
    """
    if key.startswith('encoder.'):
        if _DISTILLED.fullmatch(key[len('encoder.'):]):
            raise ValueError(f'{key}: distilled DeiT keys are not supported')
        rules, prefix, key = _ENCODER_RULES, 'backbone.', key[8:]
    elif key.startswith('decoder.'):
        rules, prefix, key = _DECODER_RULES, 'decode_head.', key[8:]
    else:
        rules, prefix = _DECODER_RULES, ''
    for pattern, target in rules:
        if re.fullmatch(pattern, key):
            return None if target is None else prefix + re.sub(
                pattern, target, key)
    raise ValueError(f'unknown DEPICT key: {key!r}')


def _layer_count(keys: Iterable[str], stack: str) -> int:
    indices = [
        int(m.group(1)) for k in keys
        for m in [re.match(rf'{stack}\.(\d+)\.', k)] if m
    ]
    return max(indices) + 1 if indices else 0


def _check_keys(given: Iterable[str],
                expected: Iterable[str],
                unknown: Iterable[str],
                where: str,
                src_prefix: str = ''):
    missing = sorted(src_prefix + k for k in set(expected) - set(given))
    unknown = sorted(src_prefix + k for k in unknown)
    if missing or unknown:
        lines = [f'cannot convert the DEPICT {where} checkpoint:']
        if unknown:
            lines.append(f'  unknown keys ({len(unknown)}): {unknown}')
        if missing:
            lines.append(f'  missing keys ({len(missing)}): {missing}')
        lines.append('  expected the official DEPICT/Segmenter layout '
                     '(see wsss_zoo/converters/depict.py).')
        raise ValueError('\n'.join(lines))


def _heads(proj: torch.Tensor, head_dims: int, name: str) -> int:
    rows = proj.shape[0]
    if rows % head_dims:
        raise ValueError(
            f'{name} has {rows} rows, not a multiple of the head width '
            f'{head_dims}; pass the head width the checkpoint was trained '
            'with (sa_head_dims / ca_head_dims).')
    return rows // head_dims


def convert_depict_decoder(state_dict: Dict[str, torch.Tensor],
                           prefix: str = '',
                           sa_head_dims: int = 100,
                           ca_head_dims: int = 50,
                           src_prefix: str = '') -> Tuple[OrderedDict, dict]:
    """Convert a bare DEPICT ``MaskTransformer`` state_dict (no prefix).

    Args:
        state_dict (dict): official decoder keys (``cls_emb``, ``net.*`` or
            ``snet.*``/``cnet.*``, norms, ``mask_norm.*``).
        prefix (str): prefix of the returned keys: '' to load into a
            ``DEPICTHead``, 'decode_head.' for a whole segmentor.
            Default: ''.
        sa_head_dims (int): self-attention head width. Default: 100.
        ca_head_dims (int): cross-attention head width. Default: 50.
        src_prefix (str): prefix the keys had in the checkpoint (only used
            to name keys in error messages). Default: ''.

    Returns:
        tuple[OrderedDict, dict]: converted state_dict and the inferred
        ``DEPICTHead`` settings (``mode``, ``num_layers``, ``num_heads``,
        ``embed_dims``, ``num_classes``, ``ca_num_layers``).
    """
    keys = list(state_dict)
    if 'cls_emb' not in state_dict:
        unexpected = [k for k in keys if not any(
            re.fullmatch(pattern, k) for pattern, _ in _DECODER_RULES)]
        raise ValueError(
            'not a DEPICT checkpoint (wrong model?): missing keys '
            f"['{src_prefix}cls_emb']; unexpected keys ({len(unexpected)}): "
            f'{[src_prefix + k for k in unexpected[:30]]}'
            f'{" ..." if len(unexpected) > 30 else ""}')
    has_net = any(k.startswith('net.') for k in keys)
    has_snet = any(k.startswith(('snet.', 'cnet.')) for k in keys)
    if has_net and has_snet:
        raise ValueError('DEPICT decoder with both `net.*` (mode sa) and '
                         '`snet.*`/`cnet.*` (mode ca) keys: not a single '
                         'official MaskTransformer.')
    mode = 'ca' if has_snet else 'sa'
    self_stack = 'snet.layers' if mode == 'ca' else 'net.layers'
    num_layers = _layer_count(keys, self_stack)
    expected = ['cls_emb'] + [f'mask_norm.{p}' for p in _WB]
    stacks = [(self_stack, num_layers)]
    if mode == 'sa':
        expected += [f'decoder_norm.{p}' for p in _WB]
    else:
        ca_num_layers = _layer_count(keys, 'cnet.layers')
        stacks.append(('cnet.layers', ca_num_layers))
        expected += [f'{n}.{p}' for n in ('snorm', 'cnorm') for p in _WB]
    for stack, depth in stacks:
        for i in range(depth):
            expected += [f'{stack}.{i}.norm.{p}' for p in _WB]
            expected += [f'{stack}.{i}.fn.{p}' for p in ('proj', 'step_size')]
    if num_layers == 0:
        expected.append(f'{self_stack}.0.fn.proj')  # reported as missing
    mapped, unknown = _map_keys(state_dict, _DECODER_RULES, prefix)
    _check_keys(keys, expected, unknown, 'decoder', src_prefix)

    _, num_classes, embed_dims = state_dict['cls_emb'].shape
    num_heads = _heads(state_dict[f'{self_stack}.0.fn.proj'], sa_head_dims,
                       f'{src_prefix}{self_stack}.0.fn.proj')
    info = dict(
        mode=mode,
        num_layers=num_layers,
        num_heads=num_heads,
        embed_dims=int(embed_dims),
        num_classes=int(num_classes),
        sa_head_dims=sa_head_dims)
    if mode == 'ca':
        cross_heads = _heads(state_dict['cnet.layers.0.fn.proj'], ca_head_dims,
                             f'{src_prefix}cnet.layers.0.fn.proj')
        if cross_heads != num_heads:
            raise ValueError(
                f'DEPICT-CA checkpoint: the self layers have {num_heads} '
                f'heads of {sa_head_dims} but the cross layers '
                f'{cross_heads} heads of {ca_head_dims}; DEPICTHead uses one '
                'num_heads: pass the head widths the checkpoint used.')
        info.update(ca_num_layers=ca_num_layers, ca_head_dims=ca_head_dims)
    return mapped, info


def _convert_encoder(state_dict) -> Tuple[OrderedDict, dict]:
    keys = list(state_dict)
    distilled = sorted(k for k in keys if _DISTILLED.fullmatch(k))
    if distilled:
        raise ValueError(
            f'distilled DeiT encoder ({distilled}): mmseg\'s '
            'VisionTransformer has no distillation token, so these DEPICT '
            'checkpoints (deit_*_distilled_*) cannot be hosted in it. Use a '
            'ViT-backbone DEPICT checkpoint (vit_*_patch*_384).')
    num_layers = _layer_count(keys, 'blocks')
    expected = ['cls_token', 'pos_embed'] + [
        f'{n}.{p}' for n in ('patch_embed.proj', 'norm') for p in _WB
    ]
    for i in range(num_layers):
        expected += [
            f'blocks.{i}.{n}.{p}' for n in ('norm1', 'norm2', 'attn.qkv',
                                            'attn.proj', 'mlp.fc1', 'mlp.fc2')
            for p in _WB
        ]
    if num_layers == 0:
        expected.append('blocks.0.attn.qkv.weight')  # reported as missing
    mapped, unknown = _map_keys(state_dict, _ENCODER_RULES, 'backbone.')
    _check_keys(keys, expected, unknown, 'encoder', 'encoder.')

    embed_dims = state_dict['cls_token'].shape[-1]
    patch_size = state_dict['patch_embed.proj.weight'].shape[-1]
    num_patches = state_dict['pos_embed'].shape[1] - 1
    side = math.isqrt(num_patches)
    # (h0, w0) cannot be told apart from (w0, h0) or other factorisations:
    # a square grid is assumed when the count is a square.
    grid = (side, side) if side * side == num_patches else None
    mlp_ratio = state_dict['blocks.0.mlp.fc1.weight'].shape[0] / embed_dims
    info = dict(
        embed_dims=int(embed_dims),
        num_layers=num_layers,
        num_heads=_VIT_HEADS.get(int(embed_dims)),
        mlp_ratio=int(mlp_ratio) if mlp_ratio.is_integer() else mlp_ratio,
        patch_size=int(patch_size),
        num_patches=int(num_patches),
        grid=grid,
        img_size=None if grid is None else
        (grid[0] * patch_size, grid[1] * patch_size))
    return mapped, info


def convert_depict(checkpoint: dict,
                   sa_head_dims: int = 100,
                   ca_head_dims: int = 50) -> Tuple[OrderedDict, dict]:
    """Convert an official DEPICT checkpoint to the mmseg layout.

    Args:
        checkpoint (dict): ``{'model': state_dict, ...}`` as saved by
            Segmenter's ``train.py``, or a bare state_dict: either the full
            model (``encoder.*`` + ``decoder.*`` keys) or a bare decoder
            (``MaskTransformer`` keys without prefix).
        sa_head_dims (int): self-attention head width. Default: 100.
        ca_head_dims (int): cross-attention head width. Default: 50.

    Returns:
        tuple[OrderedDict, dict]: the converted state_dict (``backbone.*`` +
        ``decode_head.*`` for a full model, ``DEPICTHead`` keys for a bare
        decoder) and ``info``: ``layout`` ('segmentor' or 'decoder'),
        ``decode_head`` (mode, num_layers, num_heads, embed_dims,
        num_classes, ...) and for a full model ``backbone`` (embed_dims,
        num_layers, num_heads (standard ViT value for the width, None if
        non-standard), mlp_ratio, patch_size, num_patches, grid, img_size).
        ``grid`` comes from the pos_embed length: a non-square training grid
        (e.g. 4x6) cannot be told from its transpose or other
        factorisations, so ``grid``/``img_size`` are None unless the count
        is a perfect square (then square is assumed).

    Raises:
        ValueError: unknown or missing keys (listed), a distilled DeiT
            encoder, or inconsistent decoder shapes.
    """
    state_dict = checkpoint
    for key in ('model', 'state_dict'):  # Segmenter / mmengine wrappers
        if isinstance(checkpoint.get(key), dict):
            state_dict = checkpoint[key]
            break
    keys = list(state_dict)
    is_full = any(k.startswith(('encoder.', 'decoder.')) for k in keys)
    if not is_full:
        new_sd, head_info = convert_depict_decoder(state_dict, '',
                                                   sa_head_dims, ca_head_dims)
        return new_sd, dict(layout='decoder', decode_head=head_info)

    parts = {'encoder.': OrderedDict(), 'decoder.': OrderedDict()}
    stray = []
    for key, value in state_dict.items():
        for prefix, part in parts.items():
            if key.startswith(prefix):
                part[key[len(prefix):]] = value
                break
        else:
            stray.append(key)
    if stray:
        _check_keys(keys, [], stray, 'segmentor')
    if not parts['encoder.'] or not parts['decoder.']:
        missing = 'encoder.*' if not parts['encoder.'] else 'decoder.*'
        raise ValueError(f'DEPICT checkpoint without {missing} keys: '
                         'expected a whole Segmenter model.')
    backbone_sd, backbone_info = _convert_encoder(parts['encoder.'])
    head_sd, head_info = convert_depict_decoder(parts['decoder.'],
                                                'decode_head.', sa_head_dims,
                                                ca_head_dims, 'decoder.')
    if head_info['embed_dims'] != backbone_info['embed_dims']:
        raise ValueError(
            f"decoder width {head_info['embed_dims']} != encoder width "
            f"{backbone_info['embed_dims']}: DEPICT has no projection.")
    n_cls = checkpoint.get('n_cls') if state_dict is not checkpoint else None
    if n_cls is not None and n_cls != head_info['num_classes']:
        raise ValueError(f"checkpoint says n_cls={n_cls} but cls_emb has "
                         f"{head_info['num_classes']} classes.")
    new_sd = OrderedDict(backbone_sd)
    new_sd.update(head_sd)
    return new_sd, dict(
        layout='segmentor', backbone=backbone_info, decode_head=head_info)


def encoder_config_hint(bb: dict) -> dict:
    """Backbone config of a converted Segmenter encoder (DEPICT, WeakTr
    stage 2): ``SegmenterVisionTransformer`` with Segmenter's settings.

    Args:
        bb (dict): ``info['backbone']`` of a conversion (``img_size``,
            ``patch_size``, ``embed_dims``, ``num_layers``, ``num_heads``,
            ``mlp_ratio``).
    """
    return dict(
        type='SegmenterVisionTransformer',
        img_size=bb['img_size'],
        patch_size=bb['patch_size'],
        embed_dims=bb['embed_dims'],
        num_layers=bb['num_layers'],
        num_heads=bb['num_heads'],
        mlp_ratio=bb['mlp_ratio'],
        out_indices=(bb['num_layers'] - 1, ),
        qkv_bias=True,
        patch_bias=True,
        with_cls_token=True,
        final_norm=True,
        norm_cfg=dict(type='LN', eps=1e-5, requires_grad=True),
        interpolate_mode='bilinear')


def config_hints(info: dict) -> Dict[str, dict]:
    """The mmseg config values a converted checkpoint needs.

    Args:
        info (dict): the ``info`` returned by :func:`convert_depict`.

    Returns:
        dict: ``{'backbone': {...}, 'decode_head': {...}}`` (only
        ``decode_head`` for a bare decoder); values that cannot be inferred
        are None and must be set by hand.
    """
    head = info['decode_head']
    hints = dict(
        decode_head=dict(
            type='DEPICTHead',
            mode=head['mode'],
            in_channels=head['embed_dims'],
            channels=head['embed_dims'],
            embed_dims=head['embed_dims'],
            num_layers=head['num_layers'],
            num_heads=head['num_heads'],
            num_classes=head['num_classes']))
    if head['mode'] == 'ca':
        hints['decode_head']['ca_num_layers'] = head['ca_num_layers']
    if 'backbone' in info:
        bb = info['backbone']
        hints['decode_head']['patch_size'] = bb['patch_size']
        hints['backbone'] = encoder_config_hint(bb)
    return hints


def _hints_for(missing, unexpected, mismatched) -> list:
    bad = set(missing) | set(unexpected) | {k for k, _, _ in mismatched}
    hints = []
    if 'backbone.patch_embed.projection.bias' in unexpected:
        hints.append('set backbone.patch_bias=True (Segmenter/DEPICT patch '
                     'embedding has a bias)')
    if any(k.startswith('backbone.ln1.') for k in unexpected):
        hints.append('set backbone.final_norm=True')
    if any(k == 'backbone.pos_embed' for k, _, _ in mismatched):
        hints.append('set backbone.img_size to the training crop '
                     '(pos_embed holds 1 + (H/P)*(W/P) rows)')
    if any('cross_layers' in k or 'patch_norm' in k for k in unexpected):
        hints.append("the checkpoint is DEPICT-CA: set decode_head.mode='ca'")
    if any('decoder_norm' in k for k in unexpected):
        hints.append("the checkpoint is DEPICT-SA: set decode_head.mode='sa'")
    if any(k.endswith('.proj') for k in bad):
        hints.append('check decode_head.num_heads (proj rows / 100) and '
                     'embed_dims')
    if any(
            re.match(r'(decode_head\.|)(cross_)?layers\.\d+\.', k)
            or re.match(r'backbone\.layers\.\d+\.', k) for k in bad):
        hints.append('check num_layers of the backbone / decode_head')
    return hints


def load_state_dict_strict(model: nn.Module,
                           state_dict: Dict[str, torch.Tensor]) -> None:
    """Load a converted state_dict with ``strict=True``, or explain why not.

    Args:
        model (nn.Module): built model (e.g. ``EncoderDecoder`` with
            ``VisionTransformer`` + ``DEPICTHead``, or a ``DEPICTHead``).
        state_dict (dict): output of :func:`convert_depict`.

    Raises:
        ValueError: listing missing keys, unexpected keys and shape
            mismatches, with the config setting that most likely fixes them.
    """
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    mismatched = [(k, tuple(v.shape), tuple(own[k].shape))
                  for k, v in state_dict.items()
                  if k in own and v.shape != own[k].shape]
    if missing or unexpected or mismatched:
        lines = [
            f'converted checkpoint does not fit '
            f'{type(model).__name__}:'
        ]
        if missing:
            lines.append(f'  missing keys ({len(missing)}): {missing}')
        if unexpected:
            lines.append(
                f'  unexpected keys ({len(unexpected)}): {unexpected}')
        for key, got, want in mismatched:
            lines.append(f'  shape mismatch {key}: checkpoint {got}, '
                         f'model {want}')
        lines += [
            f'  hint: {h}' for h in _hints_for(missing, unexpected, mismatched)
        ]
        raise ValueError('\n'.join(lines))
    model.load_state_dict(state_dict, strict=True)


def load_depict_checkpoint(model: nn.Module,
                           checkpoint: dict,
                           sa_head_dims: int = 100,
                           ca_head_dims: int = 50) -> dict:
    """Convert an original checkpoint and load it strictly into ``model``.

    Returns:
        dict: the ``info`` of :func:`convert_depict`.
    """
    state_dict, info = convert_depict(checkpoint, sa_head_dims, ca_head_dims)
    load_state_dict_strict(model, state_dict)
    return info
