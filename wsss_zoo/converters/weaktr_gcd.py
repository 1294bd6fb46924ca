"""Convert WeakTr stage-2 (online retraining) checkpoints to the mmseg layout.

Original: github.com/hustvl/WeakTr (commit 3457ad3), ``OnlineRetraining/
segm/train.py`` saves ``{'model': state_dict, 'optimizer': ..., 'n_cls': ...,
'lr_scheduler': ..., 'epoch': ...[, 'miou']}``; ``model`` is a Segmenter:
``encoder.*`` (Segmenter's ViT, DeiT-S for the paper) and ``decoder.*``
(``MaskTransformer``). The target is mmseg's
``EncoderDecoder(backbone=SegmenterVisionTransformer,
decode_head=WeakTrGCDHead)`` (mmseg ``VisionTransformer`` keys).

The encoder keys are mapped by the DEPICT converter (same Segmenter encoder,
see :mod:`wsss_zoo.converters.depict`); the decoder:

=====================================  =====================================
original (``decoder.``)                mmseg (``decode_head.``)
=====================================  =====================================
cls_emb                                cls_emb
proj_dec.{weight,bias}                 dec_proj.*
proj_patch   (D, D), used as x @ P     patch_proj.weight = P^T (nn.Linear)
proj_classes (D, D), used as x @ P     classes_proj.weight = P^T
blocks.{i}.*                           layers.{i}.* (as the encoder blocks)
decoder_norm, mask_norm                same
=====================================  =====================================

Also accepted: a bare decoder state_dict (keys without ``decoder.``; output
keys for a ``WeakTrGCDHead``) and an ImageNet ViT/DeiT classifier checkpoint
(timm layout, e.g. ``deit_small_patch16_224-cd65a155.pth``, which the
original loads into the encoder before stage 2; output: bare
``VisionTransformer`` keys for ``model.pretrained``). Unknown or missing keys
raise a ``ValueError`` that lists them.
"""
import re
from collections import OrderedDict
from typing import Dict, Tuple

import torch
import torch.nn as nn

from .depict import _convert_encoder, _layer_count, encoder_config_hint
from .depict import load_state_dict_strict  # noqa: F401 (re-exported)

_BLOCK_PARTS = ('norm1', 'norm2', 'attn.qkv', 'attn.proj', 'mlp.fc1',
                'mlp.fc2')
_BLOCK_RULES = [
    (r'blocks\.(\d+)\.norm([12])\.(weight|bias)', r'layers.\1.ln\2.\3'),
    (r'blocks\.(\d+)\.attn\.qkv\.(weight|bias)',
     r'layers.\1.attn.attn.in_proj_\2'),
    (r'blocks\.(\d+)\.attn\.proj\.(weight|bias)',
     r'layers.\1.attn.attn.out_proj.\2'),
    (r'blocks\.(\d+)\.mlp\.fc1\.(weight|bias)',
     r'layers.\1.ffn.layers.0.0.\2'),
    (r'blocks\.(\d+)\.mlp\.fc2\.(weight|bias)', r'layers.\1.ffn.layers.1.\2'),
]
_DECODER_RULES = [
    (r'cls_emb', 'cls_emb'),
    (r'proj_dec\.(weight|bias)', r'dec_proj.\1'),
    (r'proj_patch', 'patch_proj.weight'),  # transposed
    (r'proj_classes', 'classes_proj.weight'),  # transposed
    (r'decoder_norm\.(weight|bias)', r'decoder_norm.\1'),
    (r'mask_norm\.(weight|bias)', r'mask_norm.\1'),
] + _BLOCK_RULES
_TRANSPOSED = ('proj_patch', 'proj_classes')
_WB = ('weight', 'bias')


class WeakTrGCDConversionError(ValueError):
    """A checkpoint that is not an official WeakTr stage-2 layout."""


def _raise(where: str, unknown=(), missing=()):
    lines = [f'cannot convert the WeakTr stage-2 {where}:']
    if unknown:
        lines.append(f'  unknown keys ({len(unknown)}): {sorted(unknown)}')
    if missing:
        lines.append(f'  missing keys ({len(missing)}): {sorted(missing)}')
    lines.append('  expected the official OnlineRetraining/segm Segmenter '
                 'layout (see wsss_zoo/converters/weaktr_gcd.py).')
    raise WeakTrGCDConversionError('\n'.join(lines))


def convert_weaktr_gcd_decoder(state_dict: Dict[str, torch.Tensor],
                               prefix: str = '',
                               src_prefix: str = ''
                               ) -> Tuple[OrderedDict, dict]:
    """Convert a bare WeakTr/Segmenter ``MaskTransformer`` state_dict.

    Args:
        state_dict (dict): decoder keys without prefix.
        prefix (str): prefix of the returned keys ('' for a bare
            ``WeakTrGCDHead``, 'decode_head.' for a segmentor). Default: ''.
        src_prefix (str): prefix the keys had in the checkpoint (names keys
            in error messages). Default: ''.

    Returns:
        tuple[OrderedDict, dict]: converted state_dict and the inferred head
        settings: ``num_layers``, ``embed_dims``, ``in_channels``,
        ``num_classes``, ``mlp_ratio`` and ``num_heads_factory`` (the
        original factory's ``embed_dims // 64``; the head count is not
        stored in the weights).
    """
    keys = list(state_dict)
    num_layers = _layer_count(keys, 'blocks')
    expected = ['cls_emb', 'proj_patch', 'proj_classes'] + [
        f'{n}.{p}' for n in ('proj_dec', 'decoder_norm', 'mask_norm')
        for p in _WB
    ]
    for i in range(num_layers):
        expected += [f'blocks.{i}.{n}.{p}' for n in _BLOCK_PARTS for p in _WB]
    if num_layers == 0:
        expected.append('blocks.0.attn.qkv.weight')  # reported as missing
    mapped, unknown = OrderedDict(), []
    for key, value in state_dict.items():
        for pattern, target in _DECODER_RULES:
            if re.fullmatch(pattern, key):
                if key in _TRANSPOSED:  # x @ P == Linear with weight P^T
                    value = value.t().contiguous()
                mapped[prefix + re.sub(pattern, target, key)] = value
                break
        else:
            unknown.append(src_prefix + key)
    missing = [src_prefix + k for k in expected if k not in state_dict]
    if unknown or missing:
        _raise('decoder', unknown, missing)

    _, num_classes, embed_dims = state_dict['cls_emb'].shape
    in_channels = state_dict['proj_dec.weight'].shape[1]
    shapes = {
        'proj_patch': (embed_dims, embed_dims),
        'proj_classes': (embed_dims, embed_dims),
        'proj_dec.weight': (embed_dims, in_channels),
        'mask_norm.weight': (num_classes, ),
        'blocks.0.attn.qkv.weight': (3 * embed_dims, embed_dims),
    }
    for key, shape in shapes.items():
        if tuple(state_dict[key].shape) != shape:
            raise WeakTrGCDConversionError(
                f'{src_prefix}{key} has shape '
                f'{tuple(state_dict[key].shape)}, expected {shape} for '
                f'K={num_classes} classes of width D={embed_dims}: not a '
                'consistent MaskTransformer.')
    mlp_ratio = state_dict['blocks.0.mlp.fc1.weight'].shape[0] / embed_dims
    info = dict(
        num_layers=num_layers,
        embed_dims=int(embed_dims),
        in_channels=int(in_channels),
        num_classes=int(num_classes),
        mlp_ratio=int(mlp_ratio) if mlp_ratio.is_integer() else mlp_ratio,
        num_heads_factory=max(int(embed_dims) // 64, 1))
    return mapped, info


def _is_imagenet_vit(keys) -> bool:
    return ('patch_embed.proj.weight' in keys
            and any(k.startswith('blocks.') for k in keys)
            and 'cls_emb' not in keys)


def convert_weaktr_gcd(checkpoint: dict) -> Tuple[OrderedDict, dict]:
    """Convert an official WeakTr stage-2 checkpoint to the mmseg layout.

    Args:
        checkpoint (dict): ``{'model': state_dict, 'n_cls': ..., ...}`` as
            saved by ``OnlineRetraining/segm/train.py`` (or the same keys
            under ``'state_dict'``), or a bare
            state_dict: the whole Segmenter (``encoder.*`` + ``decoder.*``),
            a bare decoder (``MaskTransformer`` keys), or an ImageNet
            ViT/DeiT classifier (timm keys; ``head.*`` dropped).

    Returns:
        tuple[OrderedDict, dict]: converted state_dict and ``info`` with
        ``layout`` ('segmentor': ``backbone.*`` + ``decode_head.*``;
        'decoder': ``WeakTrGCDHead`` keys; 'imagenet_encoder': bare
        ``VisionTransformer`` keys for ``model.pretrained``), ``backbone``
        (see :func:`wsss_zoo.converters.depict.convert_depict`) and/or
        ``decode_head`` (see :func:`convert_weaktr_gcd_decoder`).

    Raises:
        ValueError: unknown or missing keys (listed), a distilled DeiT
            encoder, inconsistent shapes, or ``n_cls`` disagreeing with the
            class embeddings.
    """
    if not isinstance(checkpoint, dict):
        raise WeakTrGCDConversionError(
            f'expected a dict checkpoint, got {type(checkpoint).__name__}')
    state_dict = checkpoint
    for key in ('model', 'state_dict'):  # Segmenter / mmengine wrappers
        if isinstance(checkpoint.get(key), dict):
            state_dict = checkpoint[key]
            break
    keys = list(state_dict)
    is_full = any(k.startswith(('encoder.', 'decoder.')) for k in keys)
    if not is_full:
        if 'cls_emb' in state_dict:
            new_sd, head_info = convert_weaktr_gcd_decoder(state_dict)
            return new_sd, dict(layout='decoder', decode_head=head_info)
        if _is_imagenet_vit(keys):
            backbone_sd, backbone_info = _convert_encoder_loud(state_dict, '')
            bare = OrderedDict(
                (k[len('backbone.'):], v) for k, v in backbone_sd.items())
            return bare, dict(layout='imagenet_encoder', backbone=backbone_info)
        raise WeakTrGCDConversionError(
            'not a WeakTr stage-2 checkpoint (wrong model?): missing keys '
            "['encoder.*', 'decoder.*'] (or a bare decoder's 'cls_emb', or "
            "an ImageNet ViT's 'patch_embed.proj.weight' + 'blocks.*'); "
            f'unexpected keys ({len(keys)}): {keys[:20]}'
            f"{' ...' if len(keys) > 20 else ''}.")

    parts = {'encoder.': OrderedDict(), 'decoder.': OrderedDict()}
    stray = []
    for key, value in state_dict.items():
        for prefix, part in parts.items():
            if key.startswith(prefix):
                part[key[len(prefix):]] = value
                break
        else:
            stray.append(key)
    missing = [f'{p}*' for p, part in parts.items() if not part]
    if stray or missing:
        _raise('Segmenter checkpoint', stray, missing)
    backbone_sd, backbone_info = _convert_encoder_loud(parts['encoder.'],
                                                       'encoder.')
    head_sd, head_info = convert_weaktr_gcd_decoder(parts['decoder.'],
                                                    'decode_head.', 'decoder.')
    if head_info['in_channels'] != backbone_info['embed_dims']:
        raise WeakTrGCDConversionError(
            f"decoder.proj_dec takes {head_info['in_channels']} channels but "
            f"the encoder width is {backbone_info['embed_dims']}.")
    n_cls = checkpoint.get('n_cls') if state_dict is not checkpoint else None
    if n_cls is not None and int(n_cls) != head_info['num_classes']:
        raise WeakTrGCDConversionError(
            f"checkpoint says n_cls={n_cls} but decoder.cls_emb has "
            f"{head_info['num_classes']} classes.")
    new_sd = OrderedDict(backbone_sd)
    new_sd.update(head_sd)
    return new_sd, dict(
        layout='segmentor', backbone=backbone_info, decode_head=head_info)


def _convert_encoder_loud(state_dict, src_prefix: str):
    """DEPICT's Segmenter-encoder mapping, errors re-labelled for WeakTr."""
    try:
        return _convert_encoder(state_dict)
    except ValueError as e:
        raise WeakTrGCDConversionError(
            f'WeakTr stage-2 encoder ({src_prefix or "ViT"}*, the Segmenter '
            f'ViT shared with DEPICT): {e}') from e


def config_hints(info: dict) -> Dict[str, dict]:
    """The mmseg config values a converted checkpoint needs.

    Args:
        info (dict): the ``info`` returned by :func:`convert_weaktr_gcd`.

    Returns:
        dict: ``{'backbone': {...}, 'decode_head': {...}}`` (the parts the
        layout has). ``num_heads`` values are not stored in the weights: the
        standard ViT value / the original factory rule are given.
    """
    hints = {}
    if 'decode_head' in info:
        head = info['decode_head']
        hints['decode_head'] = dict(
            type='WeakTrGCDHead',
            in_channels=head['in_channels'],
            channels=head['embed_dims'],
            embed_dims=head['embed_dims'],
            num_layers=head['num_layers'],
            num_heads=head['num_heads_factory'],
            mlp_ratio=head['mlp_ratio'],
            num_classes=head['num_classes'])
    if 'backbone' in info:
        bb = info['backbone']
        if 'decode_head' in hints:
            hints['decode_head']['patch_size'] = bb['patch_size']
        hints['backbone'] = encoder_config_hint(bb)
    return hints


def load_weaktr_gcd_checkpoint(model: nn.Module, checkpoint: dict) -> dict:
    """Convert an original checkpoint and load it strictly into ``model``
    (an ``EncoderDecoder`` for a whole Segmenter, a ``WeakTrGCDHead`` for a
    bare decoder, a ``VisionTransformer`` for an ImageNet encoder).

    Returns:
        dict: the ``info`` of :func:`convert_weaktr_gcd`.
    """
    state_dict, info = convert_weaktr_gcd(checkpoint)
    load_state_dict_strict(model, state_dict)
    return info


__all__ = [
    'convert_weaktr_gcd', 'convert_weaktr_gcd_decoder', 'config_hints',
    'load_weaktr_gcd_checkpoint', 'WeakTrGCDConversionError'
]
