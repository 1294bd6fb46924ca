"""A trained stage-1 encoder as the initial weights of a stage-2 mmseg ViT.

A wsss_zoo option, in none of the original methods: their stage 2 starts
from ImageNet weights. Where none can be used (e.g. from-scratch runs on
SynthShapes; nothing is downloaded here), the stage-1 classifier, trained on
the same images with image-level labels only, is the next best encoder.

Input: a ``tools/train.py`` checkpoint of a :class:`CAMSegmentor` whose
backbone is a plain ViT of the MCTformer family (``MCTEncoder`` and its
subclasses: MCTformer V1/V2/+, WeakTr, TS-CAM's ``DeiTCAM``): keys
``backbone.{cls_token (1, T, D), pos_embed (1, T + N, D), patch_embed.proj,
blocks.*, norm}``. Output: bare mmseg ``VisionTransformer`` keys (one class
token) for ``backbone.init_cfg=dict(type='Pretrained', checkpoint=...)``.

* the T class tokens become one: their mean; so does their positional
  embedding (the reverse of MCTformer's ``main.py``, which copies the one
  DeiT token into T);
* patch positional embeddings, patch embedding, blocks and final norm are
  copied (the timm -> mmseg key mapping of the DEPICT converter). MCTformer
  does not apply its final norm, so that norm is still at its init (a plain
  LayerNorm) and stays harmless in a ViT with ``final_norm=True``.
"""
from collections import OrderedDict
from typing import Dict, Tuple

import torch

from .depict import _convert_encoder


def stage1_encoder_to_vit(checkpoint: dict) -> Tuple[OrderedDict, dict]:
    """Stage-1 ViT encoder -> mmseg ``VisionTransformer`` state dict.

    Args:
        checkpoint (dict): ``{'state_dict': ...}`` as saved by mmengine, or
            the state dict itself (``backbone.*`` keys).

    Returns:
        tuple[OrderedDict, dict]: bare ``VisionTransformer`` keys (no
        ``backbone.`` prefix) and ``info`` (``embed_dims``, ``num_layers``,
        ``patch_size``, ``num_patches``, ``grid``, ``img_size``,
        ``mlp_ratio``, ``class_tokens`` T).

    Raises:
        ValueError: no ``backbone.*`` keys, a backbone that is not a plain
            ViT (e.g. TransCAM's Conformer), or inconsistent shapes; the
            message lists the offending keys.
    """
    if not isinstance(checkpoint, dict):
        raise ValueError(
            f'expected a checkpoint dict, got {type(checkpoint).__name__}')
    state_dict = checkpoint.get('state_dict', checkpoint)
    backbone: Dict[str, torch.Tensor] = OrderedDict(
        (k[len('backbone.'):], v) for k, v in state_dict.items()
        if k.startswith('backbone.'))
    if not backbone:
        raise ValueError(
            'missing keys backbone.*: expected a wsss_zoo stage-1 '
            'checkpoint (work_dirs/<run>/iter_*.pth written by '
            f'tools/train.py); unexpected keys: {list(state_dict)[:8]}')
    needed = ('cls_token', 'pos_embed', 'patch_embed.proj.weight')
    missing = [f'backbone.{k}' for k in needed if k not in backbone]
    if missing:
        raise ValueError(
            f'the stage-1 backbone is not a plain ViT (missing {missing}); '
            'only MCTformer-family encoders (MCTformer V1/V2/+, WeakTr, '
            'TS-CAM) can initialise a VisionTransformer, not e.g. '
            "TransCAM's Conformer")
    cls_token, pos_embed = backbone['cls_token'], backbone['pos_embed']
    T = cls_token.shape[1]
    if (cls_token.dim() != 3 or pos_embed.dim() != 3
            or pos_embed.shape[1] <= T
            or pos_embed.shape[2] != cls_token.shape[2]):
        raise ValueError(
            f'backbone.cls_token {tuple(cls_token.shape)} and '
            f'backbone.pos_embed {tuple(pos_embed.shape)} do not fit '
            '(1, T, D) and (1, T + N, D)')
    backbone['cls_token'] = cls_token.mean(dim=1, keepdim=True)
    backbone['pos_embed'] = torch.cat(
        [pos_embed[:, :T].mean(dim=1, keepdim=True), pos_embed[:, T:]], dim=1)
    mapped, info = _convert_encoder(backbone)
    bare = OrderedDict(
        (k[len('backbone.'):], v) for k, v in mapped.items())
    info.update(class_tokens=int(T))
    return bare, info


__all__ = ['stage1_encoder_to_vit']
