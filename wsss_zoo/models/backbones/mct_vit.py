"""Multi-class-token ViT encoders of MCTformer (V1, V2).

Xu et al., "Multi-class Token Transformer for Weakly Supervised Semantic
Segmentation", CVPR 2022 (xulianuwa/MCTformer: ``models.py``,
``vision_transformer.py``, ``main.py``). Re-implemented on timm blocks.

Tokens are ``[c_1 .. c_C, p_1 .. p_P]``: C learned class tokens, then the
patch tokens of a stride-``patch_size`` conv (no size check; a ragged input
floors). Positional embeddings cover the class rows and the stored square
patch grid and are resized per input by the rule of each variant
(:mod:`wsss_zoo.models.utils.pos_embed`). Blocks are timm pre-norm blocks
(LN eps 1e-6, exact GELU) that capture attention only for the requested
layers. The final ``norm`` exists for checkpoint compatibility but, as in the
original, is never applied; it is frozen (it would get no gradient anyway),
so DDP needs no ``find_unused_parameters``.
"""
import logging
import os.path as osp
from functools import partial
from typing import Dict, Iterable, Optional, Tuple

import torch
import torch.nn as nn
from mmengine.logging import print_log
from mmengine.model import BaseModule
from mmengine.model.weight_init import trunc_normal_
from timm.layers import PatchEmbed
from torch import Tensor

from mmseg.registry import MODELS
from ..utils.attention import CaptureBlock, run_blocks
from ..utils.pos_embed import mct_patch_pos_embed, resize_pos_embed_bicubic

# Keys of an ImageNet DeiT / timm ViT checkpoint that an MCT encoder does not
# use (classifier heads); dropped with an info message.
_CLASSIFIER_KEYS = ('head.weight', 'head.bias', 'head_dist.weight',
                    'head_dist.bias')


def _load_local_state_dict(path: str) -> Dict[str, Tensor]:
    """State dict of a local checkpoint (``{'model'|'state_dict': sd}`` or sd).

    Loaded with ``torch.load(weights_only=True)``; ``module.`` and
    ``backbone.`` prefixes are stripped.
    """
    if '://' in str(path):
        raise ValueError(
            f'pretrained checkpoint must be a local file, got {path!r}: '
            'download it first (nothing is downloaded automatically)')
    if not osp.isfile(path):
        raise FileNotFoundError(f'pretrained checkpoint not found: {path!r}')
    ckpt = torch.load(path, map_location='cpu', weights_only=True)
    for key in ('model', 'state_dict'):
        if isinstance(ckpt, dict) and isinstance(ckpt.get(key), dict):
            ckpt = ckpt[key]
            break
    out = {}
    for k, v in ckpt.items():
        for prefix in ('module.', 'backbone.'):
            if k.startswith(prefix):
                k = k[len(prefix):]
        out[k] = v
    return out


class MCTEncoder(BaseModule):
    """Multi-class-token ViT encoder (shared by MCTformer V1, V2 and +).

    Subclasses only say how positional embeddings are stored and added
    (:meth:`_embed_tokens`, :meth:`_init_pos_embed`, :meth:`_adapt_imagenet`)
    and whether the final ``norm`` is applied (``apply_final_norm``: False
    for MCTformer, True for the single-class-token TS-CAM DeiT).

    Args:
        img_size (int): training image size; sets the stored patch grid
            (img_size // patch_size)^2. Default: 224.
        patch_size (int): patch size. Default: 16.
        in_channels (int): image channels. Default: 3.
        embed_dims (int): token dims D. Default: 384.
        num_layers (int): transformer layers. Default: 12.
        num_heads (int): attention heads. Default: 6.
        mlp_ratio (float): MLP hidden / D. Default: 4.
        qkv_bias (bool): bias in the qkv projection. Default: True.
        num_classes (int): number of class tokens C. Default: 20.
        drop_rate (float): dropout after pos-embed, in MLP and projections.
            Default: 0.
        attn_drop_rate (float): attention dropout. Default: 0.
        drop_path_rate (float): stochastic depth, linear 0 -> rate.
            Default: 0.1.
        norm_eps (float): LayerNorm eps. Default: 1e-6.
        pretrained (str, optional): LOCAL ImageNet DeiT / timm ViT
            checkpoint; same as ``init_cfg=dict(type='Pretrained',
            checkpoint=pretrained)``. Default: None.
        init_cfg (dict, optional): mmengine init config. Default: None.
    """

    # MCTformer never applies the final LayerNorm (kept frozen for checkpoint
    # compatibility); a subclass that does sets this to True.
    apply_final_norm = False

    def __init__(self,
                 img_size: int = 224,
                 patch_size: int = 16,
                 in_channels: int = 3,
                 embed_dims: int = 384,
                 num_layers: int = 12,
                 num_heads: int = 6,
                 mlp_ratio: float = 4,
                 qkv_bias: bool = True,
                 num_classes: int = 20,
                 drop_rate: float = 0.,
                 attn_drop_rate: float = 0.,
                 drop_path_rate: float = 0.1,
                 norm_eps: float = 1e-6,
                 pretrained: Optional[str] = None,
                 init_cfg: Optional[dict] = None):
        if pretrained is not None:
            if init_cfg is not None:
                raise ValueError(f'{type(self).__name__}: give pretrained or '
                                 'init_cfg, not both')
            if not isinstance(pretrained, str):
                raise TypeError('pretrained must be a str path, got '
                                f'{type(pretrained).__name__}')
            init_cfg = dict(type='Pretrained', checkpoint=pretrained)
        super().__init__(init_cfg=init_cfg)
        if embed_dims % num_heads:
            raise ValueError(f'embed_dims {embed_dims} is not divisible by '
                             f'num_heads {num_heads}')
        self.img_size = img_size
        self.patch_size = patch_size
        self.embed_dims = embed_dims
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.num_classes = num_classes
        self.grid_size = img_size // patch_size
        self.num_patches = self.grid_size**2

        self.patch_embed = PatchEmbed(
            img_size=None,  # any size; the stride-p conv floors
            patch_size=patch_size,
            in_chans=in_channels,
            embed_dim=embed_dims,
            flatten=False)
        self.cls_token = nn.Parameter(torch.zeros(1, num_classes, embed_dims))
        self._init_pos_embed()
        self.pos_drop = nn.Dropout(p=drop_rate)
        dpr = torch.linspace(0, drop_path_rate, num_layers).tolist()
        self.blocks = nn.ModuleList([
            CaptureBlock(
                dim=embed_dims,
                num_heads=num_heads,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                proj_drop=drop_rate,
                attn_drop=attn_drop_rate,
                drop_path=dpr[i],
                norm_layer=partial(nn.LayerNorm, eps=norm_eps))
            for i in range(num_layers)
        ])
        self.norm = nn.LayerNorm(embed_dims, eps=norm_eps)
        if not self.apply_final_norm:
            # kept for checkpoint compatibility; never applied (MCTformer)
            self.norm.requires_grad_(False)

    # ------------------------------------------------------------------
    # positional embeddings (variant-specific)
    def _init_pos_embed(self):
        """V1/V2: one table, C class rows then the stored patch grid."""
        self.pos_embed = nn.Parameter(
            torch.zeros(1, self.num_classes + self.num_patches,
                        self.embed_dims))

    def _embed_tokens(self, patches: Tensor, img_hw: Tuple[int, int],
                      grid_hw: Tuple[int, int]) -> Tensor:
        """[class tokens, patch tokens] + positional embeddings.

        Args:
            patches (Tensor): patch tokens, (B, P, D).
            img_hw, grid_hw: input (H, W) and patch grid (h, w).

        Returns:
            Tensor: (B, C + P, D).
        """
        C = self.num_classes
        cls_pos, patch_pos = self.pos_embed[:, :C], self.pos_embed[:, C:]
        patch_pos = mct_patch_pos_embed(patch_pos, img_hw, grid_hw)
        cls_tokens = self.cls_token.expand(patches.shape[0], -1, -1)
        tokens = torch.cat([cls_tokens, patches], dim=1)
        return tokens + torch.cat([cls_pos, patch_pos], dim=1)

    def _pos_embed_params(self):
        return [self.pos_embed]

    # ------------------------------------------------------------------
    def forward(self, x: Tensor,
                capture_layers: Optional[Iterable[int]] = None) -> dict:
        """Encode images into class and patch tokens.

        Args:
            x (Tensor): images, (B, 3, H, W), H and W >= patch_size.
            capture_layers (Iterable[int], optional): layers whose attention
                maps are returned (negative indices allowed). None: none, and
                every layer uses fused attention.

        Returns:
            dict: ``cls_tokens`` (B, C, D) final class tokens (after the
            final norm only if ``apply_final_norm``); ``patch_tokens``
            (B, P, D), P = h * w, likewise; ``hw`` (h, w);
            ``attn`` {layer: (B, heads, N, N) post-softmax map}, N = C + P,
            only for ``capture_layers``; ``num_layers`` (int).
        """
        B, _, H, W = x.shape
        if H < self.patch_size or W < self.patch_size:
            raise ValueError(
                f'{type(self).__name__}: input {H}x{W} is smaller than one '
                f'patch ({self.patch_size}x{self.patch_size}); resize or pad '
                f'it to at least {self.patch_size} pixels per side')
        patches = self.patch_embed(x)  # (B, D, h, w)
        h, w = patches.shape[-2:]
        patches = patches.flatten(2).transpose(1, 2)  # (B, P, D)
        tokens = self.pos_drop(self._embed_tokens(patches, (H, W), (h, w)))
        per_block = []
        hook = self._per_block_hook(per_block)
        tokens, attn = run_blocks(self.blocks, tokens, capture_layers, hook)
        if self.apply_final_norm:
            tokens = self.norm(tokens)
        C = self.num_classes
        feats = dict(
            cls_tokens=tokens[:, :C],
            patch_tokens=tokens[:, C:],
            hw=(int(h), int(w)),
            attn=attn,
            num_layers=self.num_layers)
        if per_block:
            feats['cls_tokens_per_block'] = torch.stack(per_block)
        return feats

    def _per_block_hook(self, store):
        """Hook collecting per-block outputs (None: nothing collected)."""
        return None

    # ------------------------------------------------------------------
    # initialisation
    def init_weights(self):
        """Random init (timm ViT rule) or a local ImageNet checkpoint.

        With ``init_cfg=dict(type='Pretrained', checkpoint=PATH)`` (or
        ``pretrained=PATH``) a DeiT / timm ViT checkpoint is adapted as the
        original ``main.py`` does when fine-tuning: its single class token
        (and class pos-embed row) is repeated C times, the patch pos-embed is
        resized to the training grid, classifier heads are dropped; other
        unexpected and missing keys are reported as warnings.
        """
        cfg = self.init_cfg
        if cfg is not None and not (isinstance(cfg, dict)
                                    and cfg.get('type') == 'Pretrained'):
            super().init_weights()
            return
        trunc_normal_(self.cls_token, std=.02)
        for p in self._pos_embed_params():
            trunc_normal_(p, std=.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if cfg is not None:  # Pretrained: load over the random init
            self._load_imagenet(cfg['checkpoint'])
            self._is_init = True

    def _class_rows(self, sd: Dict[str, Tensor]) -> int:
        """Number of class tokens in a checkpoint: 1 (ImageNet) or C."""
        n_cls = sd['cls_token'].shape[1] if 'cls_token' in sd else 1
        if n_cls not in (1, self.num_classes):
            raise ValueError(
                f'{type(self).__name__}: checkpoint has {n_cls} class tokens;'
                f' expected 1 (ImageNet) or num_classes={self.num_classes}')
        return n_cls

    def _adapt_imagenet(self, sd: Dict[str, Tensor]) -> Dict[str, Tensor]:
        """V1/V2: pos_embed = [repeated class row, resized patch grid]."""
        n_cls = self._class_rows(sd)
        if 'cls_token' in sd:
            sd['cls_token'] = sd['cls_token'].expand(
                1, self.num_classes, -1).clone()
        pos = sd.get('pos_embed')
        if pos is not None:
            cls_pos = pos[:, :n_cls].expand(1, self.num_classes, -1)
            patch_pos = resize_pos_embed_bicubic(
                pos[:, n_cls:], (self.grid_size, self.grid_size))
            sd['pos_embed'] = torch.cat([cls_pos, patch_pos], dim=1)
        return sd

    def _load_imagenet(self, path: str):
        sd = _load_local_state_dict(path)
        dropped = [k for k in _CLASSIFIER_KEYS if sd.pop(k, None) is not None]
        sd = self._adapt_imagenet(sd)
        own = self.state_dict()
        unexpected = sorted(k for k in sd if k not in own)
        for k in unexpected:
            sd.pop(k)
        mismatched = sorted(k for k in sd if sd[k].shape != own[k].shape)
        if mismatched:
            raise ValueError(
                f'{type(self).__name__}: checkpoint {path!r} has shapes that '
                'do not fit: ' + ', '.join(
                    f'{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}'
                    for k in mismatched))
        missing = sorted(k for k in own if k not in sd)
        self.load_state_dict(sd, strict=False)
        name = type(self).__name__
        print_log(f'{name}: loaded {len(sd)} tensors from {path}'
                  + (f'; dropped classifier {dropped}' if dropped else ''),
                  logger='current')
        if unexpected:
            print_log(f'{name}: UNEXPECTED keys in {path} (ignored): '
                      f'{unexpected}', logger='current', level=logging.WARNING)
        if missing:
            print_log(f'{name}: MISSING keys in {path} (left at their '
                      f'random init): {missing}', logger='current',
                      level=logging.WARNING)
        self.load_report = dict(
            loaded=sorted(sd), dropped=dropped, unexpected=unexpected,
            missing=missing)


@MODELS.register_module()
class MCTformerV1(MCTEncoder):
    """MCTformer-V1 encoder: C class tokens + patch tokens (CVPR 2022).

    Class logits are the mean over D of each final class token and CAMs the
    class-to-patch attention of the last layers; both live in
    :class:`MCTHead` (``version='v1'``). The original V1's unused
    ``head`` Linear is not kept (the converter reports it as dropped).
    Positional embeddings: ``pos_embed`` (1, C + N, D), resized by
    :func:`mct_patch_pos_embed`. Args: see :class:`MCTEncoder`.
    """


@MODELS.register_module()
class MCTformerV2(MCTformerV1):
    """MCTformer-V2 encoder: the V1 token encoder unchanged.

    The original ``MCTformerV2`` differs from V1 only in its head (the 3x3
    conv PatchCAM branch, :class:`MCTHead` ``version='v2'``); the encoder,
    tokens and positional handling are the same. Args: see
    :class:`MCTEncoder`.
    """
