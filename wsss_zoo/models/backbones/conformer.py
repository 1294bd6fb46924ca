"""Conformer backbone as modified by TransCAM.

Peng et al., "Conformer: Local Features Coupling Global Representations for
Visual Recognition", ICCV 2021 (pengzhiliang/Conformer), with the changes of
Li et al., "TransCAM: Transformer Attention-based CAM Refinement for Weakly
Supervised Semantic Segmentation", 2022 (liruiwen/TransCAM,
``network/conformer.py::Net``):

* the last fusion bottleneck keeps stride 1 (upstream: 2), so the final CNN
  map is at 1/16, the size of the token grid;
* the classifier heads (a 3x3 conv CAM head on the CNN map, a Linear on the
  class token) live in :class:`TransCAMHead`; this module stops at features.

Layout (module names are the original's, so checkpoints map 1:1)::

    stem: conv1 7x7/2 -> bn1 (eps 1e-5) -> ReLU -> maxpool 3/2    (1/4)
    stage 1: conv_1 bottleneck 64 -> C1; tokens = [cls, trans_patch_conv
             (k = s = 4) of the stem], trans_1 (ViT block)
    conv_trans_i, i = 2..L: bottleneck (cnn_block) -> FCUDown (squeeze_block)
             -> ViT block (trans_block) on squeeze + incoming tokens ->
             FCUUp (expand_block) -> bottleneck (fusion_block) that adds the
             up-sampled tokens before its 3x3 conv
             i <= L/3: C1, 1/4, dw 4; i <= 2L/3: C2, 1/8 (first stride 2),
             dw 2; else C3, 1/16 (first stride 2), dw 1, i = L: last fusion
             (stride 1 with residual conv)
    trans_norm (LayerNorm eps 1e-5) on the final tokens

There is no positional embedding. Bottleneck BatchNorms use eps 1e-6 (the
stem's 1e-5); token LayerNorms eps 1e-6. The transformer blocks are timm
blocks (:class:`CaptureBlock`, exact GELU) that build their attention map
only when captured; otherwise attention is fused.
"""
import logging
from functools import partial
from typing import Dict, Iterable, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.logging import print_log
from mmengine.model import BaseModule
from mmengine.model.weight_init import trunc_normal_
from torch import Tensor

from mmseg.registry import MODELS
from ..utils.attention import CaptureBlock, normalize_layer_indices
from .mct_vit import _load_local_state_dict

# ImageNet Conformer classifiers; TransCAM's train script deletes them
# before loading (its own heads have other shapes).
_IMAGENET_HEAD_KEYS = ('trans_cls_head.weight', 'trans_cls_head.bias',
                       'conv_cls_head.weight', 'conv_cls_head.bias')
_PATCH_SIZE = 16  # CNN stride 16 = 4 (stem) * 4 (stage strides)


class ConvBlock(nn.Module):
    """Conformer bottleneck: 1x1 -> 3x3 (stride) -> 1x1, plus residual.

    ``forward(x, x_t)`` adds ``x_t`` (up-sampled tokens, the mid width) to
    the input of the 3x3 conv. BatchNorm eps 1e-6, ReLU.

    Args:
        in_channels (int): input channels.
        out_channels (int): output channels (mid = out // 4).
        stride (int): stride of the 3x3 conv and the residual conv.
        res_conv (bool): 1x1 conv + BN on the residual path.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1,
                 res_conv: bool = False):
        super().__init__()
        mid = out_channels // 4
        norm = partial(nn.BatchNorm2d, eps=1e-6)
        self.conv1 = nn.Conv2d(in_channels, mid, 1, bias=False)
        self.bn1 = norm(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, padding=1, bias=False)
        self.bn2 = norm(mid)
        self.conv3 = nn.Conv2d(mid, out_channels, 1, bias=False)
        self.bn3 = norm(out_channels)
        self.res_conv = res_conv
        if res_conv:
            self.residual_conv = nn.Conv2d(
                in_channels, out_channels, 1, stride, bias=False)
            self.residual_bn = norm(out_channels)

    def forward(self, x: Tensor,
                x_t: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """x (B, C_in, H, W), x_t (B, mid, H, W) or None.

        Returns:
            tuple: output (B, C_out, H/s, W/s) and the mid feature after the
            3x3 conv (B, mid, H/s, W/s).
        """
        residual = x
        x = F.relu(self.bn1(self.conv1(x)), inplace=True)
        x2 = F.relu(self.bn2(self.conv2(x if x_t is None else x + x_t)),
                    inplace=True)
        x = self.bn3(self.conv3(x2))
        if self.res_conv:
            residual = self.residual_bn(self.residual_conv(residual))
        return F.relu(x + residual, inplace=True), x2


class FCUDown(nn.Module):
    """Feature coupling CNN -> tokens: 1x1 conv, avg-pool, LN, GELU.

    The class token of the incoming tokens is prepended (so the sum with the
    incoming tokens in :class:`ConvTransBlock` doubles it, as the original).
    """

    def __init__(self, in_channels: int, embed_dims: int, dw_stride: int):
        super().__init__()
        self.conv_project = nn.Conv2d(in_channels, embed_dims, 1)
        self.sample_pooling = nn.AvgPool2d(dw_stride, dw_stride)
        self.ln = nn.LayerNorm(embed_dims, eps=1e-6)
        self.act = nn.GELU()

    def forward(self, x: Tensor, tokens: Tensor) -> Tensor:
        """x (B, C, H, W), tokens (B, 1 + P, D) -> (B, 1 + P, D)."""
        x = self.sample_pooling(self.conv_project(x))
        x = self.act(self.ln(x.flatten(2).transpose(1, 2)))
        return torch.cat([tokens[:, :1], x], dim=1)


class FCUUp(nn.Module):
    """Feature coupling tokens -> CNN: 1x1 conv, BN, ReLU, nearest x dw."""

    def __init__(self, embed_dims: int, out_channels: int, up_stride: int):
        super().__init__()
        self.up_stride = up_stride
        self.conv_project = nn.Conv2d(embed_dims, out_channels, 1)
        self.bn = nn.BatchNorm2d(out_channels, eps=1e-6)
        self.act = nn.ReLU()

    def forward(self, tokens: Tensor, hw: Tuple[int, int]) -> Tensor:
        """tokens (B, 1 + h * w, D) -> (B, C, h * up, w * up)."""
        B, _, D = tokens.shape
        h, w = hw
        x = tokens[:, 1:].transpose(1, 2).reshape(B, D, h, w)
        x = self.act(self.bn(self.conv_project(x)))
        return F.interpolate(x, size=(h * self.up_stride, w * self.up_stride))


class ConvTransBlock(nn.Module):
    """One CNN + transformer stage block with the two coupling units.

    Args:
        in_channels, out_channels (int): CNN widths.
        stride (int): CNN stride of this block (1 or 2).
        res_conv (bool): residual conv in ``cnn_block``.
        dw_stride (int): CNN map / token grid ratio of this stage.
        last_fusion (bool): TransCAM's last block: ``fusion_block`` with a
            residual conv and stride 1.
        block_cfg (dict): kwargs of the :class:`CaptureBlock`.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int,
                 res_conv: bool, dw_stride: int, last_fusion: bool,
                 block_cfg: dict):
        super().__init__()
        mid = out_channels // 4
        self.dw_stride = dw_stride
        self.cnn_block = ConvBlock(in_channels, out_channels, stride,
                                   res_conv)
        self.fusion_block = ConvBlock(out_channels, out_channels, 1,
                                      res_conv=last_fusion)
        self.squeeze_block = FCUDown(mid, block_cfg['dim'], dw_stride)
        self.expand_block = FCUUp(block_cfg['dim'], mid, dw_stride)
        self.trans_block = CaptureBlock(**block_cfg)

    def forward(self, x: Tensor, tokens: Tensor) -> Tuple[Tensor, Tensor]:
        """x (B, C_in, H, W), tokens (B, 1 + P, D) -> CNN map, tokens."""
        x, x2 = self.cnn_block(x)
        tokens = self.trans_block(self.squeeze_block(x2, tokens) + tokens)
        H, W = x2.shape[-2:]
        up = self.expand_block(tokens, (H // self.dw_stride,
                                        W // self.dw_stride))
        x, _ = self.fusion_block(x, up)
        return x, tokens


@MODELS.register_module()
class Conformer(BaseModule):
    """TransCAM's Conformer: CNN branch + transformer branch, stride 16.

    Args:
        in_channels (int): image channels. Default: 3.
        base_channels (int): CNN width unit; stage widths are
            ``int(base_channels * channel_ratio * {1, 2, 4})``. Default: 64.
        channel_ratio (float): Conformer-Ti 1, -S 4, -B 6. Default: 4.
        embed_dims (int): token dims D. Default: 384.
        num_layers (int): transformer blocks L (``depth``; trans_1 plus
            conv_trans_2..L), a multiple of 3. Default: 12.
        num_heads (int): attention heads. Default: 6.
        mlp_ratio (float): MLP hidden / D. Default: 4.
        qkv_bias (bool): bias in qkv. Default: True.
        drop_rate (float): dropout in MLP and projections. Default: 0.
        attn_drop_rate (float): attention dropout. Default: 0.
        drop_path_rate (float): stochastic depth, linear 0 -> rate over the
            L blocks. Default: 0.1 (TransCAM's Net_sm).
        pretrained (str, optional): LOCAL ImageNet Conformer checkpoint,
            same as ``init_cfg=dict(type='Pretrained', checkpoint=...)``.
            Default: None.
        init_cfg (dict, optional): mmengine init config. Default: None.
    """

    patch_size = _PATCH_SIZE

    def __init__(self,
                 in_channels: int = 3,
                 base_channels: int = 64,
                 channel_ratio: float = 4,
                 embed_dims: int = 384,
                 num_layers: int = 12,
                 num_heads: int = 6,
                 mlp_ratio: float = 4.,
                 qkv_bias: bool = True,
                 drop_rate: float = 0.,
                 attn_drop_rate: float = 0.,
                 drop_path_rate: float = 0.1,
                 pretrained: Optional[str] = None,
                 init_cfg: Optional[dict] = None):
        if pretrained is not None:
            if init_cfg is not None:
                raise ValueError('Conformer: give pretrained or init_cfg, '
                                 'not both')
            if not isinstance(pretrained, str):
                raise TypeError('Conformer: pretrained must be a str path, '
                                f'got {type(pretrained).__name__}')
            init_cfg = dict(type='Pretrained', checkpoint=pretrained)
        super().__init__(init_cfg=init_cfg)
        if num_layers < 3 or num_layers % 3:
            raise ValueError('Conformer: num_layers must be a multiple of 3 '
                             f'(one third per CNN stage), got {num_layers}')
        if embed_dims % num_heads:
            raise ValueError(f'Conformer: embed_dims {embed_dims} is not '
                             f'divisible by num_heads {num_heads}')
        self.embed_dims = embed_dims
        self.num_layers = num_layers
        self.num_heads = num_heads
        widths = [int(base_channels * channel_ratio * m) for m in (1, 2, 4)]
        if min(widths) < 4:
            raise ValueError('Conformer: base_channels * channel_ratio must '
                             f'be >= 4, got stage widths {widths}')
        self.stage_channels = widths
        self.out_channels = widths[-1]

        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dims))
        self.conv1 = nn.Conv2d(in_channels, 64, 7, 2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)  # eps 1e-5, unlike the bottlenecks
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

        dw = _PATCH_SIZE // 4
        dpr = torch.linspace(0, drop_path_rate, num_layers,
                             device='cpu').tolist()

        def block_cfg(i):
            return dict(dim=embed_dims, num_heads=num_heads,
                        mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                        proj_drop=drop_rate, attn_drop=attn_drop_rate,
                        drop_path=dpr[i],
                        norm_layer=partial(nn.LayerNorm, eps=1e-6))

        self.conv_1 = ConvBlock(64, widths[0], 1, res_conv=True)
        self.trans_patch_conv = nn.Conv2d(64, embed_dims, dw, dw)
        self.trans_1 = CaptureBlock(**block_cfg(0))
        per_stage = num_layers // 3
        for i in range(2, num_layers + 1):
            stage = (i - 1) // per_stage  # 0, 1, 2
            first = i == stage * per_stage + 1 and stage > 0
            in_ch = widths[stage - 1] if first else widths[stage]
            self.add_module(
                f'conv_trans_{i}',
                ConvTransBlock(in_ch, widths[stage], 2 if first else 1,
                               res_conv=first, dw_stride=dw // 2**stage,
                               last_fusion=i == num_layers,
                               block_cfg=block_cfg(i - 1)))
        self.trans_norm = nn.LayerNorm(embed_dims)  # eps 1e-5

    def conv_trans_blocks(self) -> List[ConvTransBlock]:
        """conv_trans_2 .. conv_trans_L."""
        return [getattr(self, f'conv_trans_{i}')
                for i in range(2, self.num_layers + 1)]

    def trans_blocks(self) -> List[CaptureBlock]:
        """The L attention blocks in order (layer index 0 = trans_1)."""
        return [self.trans_1] + [b.trans_block
                                 for b in self.conv_trans_blocks()]

    # ------------------------------------------------------------------
    def _stem(self, x: Tensor) -> Tensor:
        B, _, H, W = x.shape
        x = self.maxpool(F.relu(self.bn1(self.conv1(x)), inplace=True))
        if x.shape[-2] % 4 or x.shape[-1] % 4:
            raise ValueError(
                f'Conformer: input {H}x{W} gives a {tuple(x.shape[-2:])} stem '
                'map, which must be divisible by 4 for the CNN / token '
                'coupling; resize or pad the image to a multiple of 16 '
                'pixels per side')
        return x

    def forward(self, x: Tensor,
                capture_layers: Optional[Iterable[int]] = None) -> dict:
        """Encode images with both branches.

        Args:
            x (Tensor): images, (B, 3, H, W), H and W multiples of 16.
            capture_layers (Iterable[int], optional): attention blocks
                (0 = trans_1, i = conv_trans_{i+1}; negatives count from the
                end) whose maps are returned. None: none, all fused.

        Returns:
            dict: ``cnn_feat`` (B, C3, h, w) final CNN map (h = H / 16,
            w = W / 16); ``cls_tokens`` (B, 1, D) and ``patch_tokens``
            (B, P, D), P = h * w, after ``trans_norm``; ``hw`` (h, w);
            ``attn`` {layer: (B, heads, 1 + P, 1 + P) post-softmax map} for
            ``capture_layers`` only; ``num_layers`` (int).
        """
        blocks = self.trans_blocks()
        wanted = normalize_layer_indices(capture_layers, self.num_layers)
        try:
            for i in wanted:
                blocks[i].attn.capture = True
            x_base = self._stem(x)
            x, _ = self.conv_1(x_base)
            patches = self.trans_patch_conv(x_base)  # (B, D, h, w)
            h, w = patches.shape[-2:]
            tokens = torch.cat([self.cls_token.expand(x.shape[0], -1, -1),
                                patches.flatten(2).transpose(1, 2)], dim=1)
            tokens = self.trans_1(tokens)
            for block in self.conv_trans_blocks():
                x, tokens = block(x, tokens)
            attn = {i: blocks[i].attn.attn_map for i in wanted}
        finally:
            for blk in blocks:
                blk.attn.capture = False
                blk.attn.attn_map = None
        tokens = self.trans_norm(tokens)
        return dict(
            cnn_feat=x,
            cls_tokens=tokens[:, :1],
            patch_tokens=tokens[:, 1:],
            hw=(int(h), int(w)),
            attn=attn,
            num_layers=self.num_layers)

    # ------------------------------------------------------------------
    def init_weights(self):
        """The original init, or a local ImageNet Conformer checkpoint.

        Random: Linear trunc-normal(0.02) with zero bias, Conv2d Kaiming
        normal (fan_out, ReLU), LayerNorm / BatchNorm 1 and 0, ``cls_token``
        trunc-normal(0.02) (``Net._init_weights``). With
        ``init_cfg=dict(type='Pretrained', checkpoint=PATH)`` the ImageNet
        weights are loaded over it as TransCAM's ``train_TransCAM.py``
        does: the classifier keys (``trans_cls_head.*``,
        ``conv_cls_head.*``) are deleted, the rest must fit; unexpected or
        missing keys are logged as warnings.
        """
        cfg = self.init_cfg
        if cfg is not None and not (isinstance(cfg, dict)
                                    and cfg.get('type') == 'Pretrained'):
            super().init_weights()
            return
        trunc_normal_(self.cls_token, std=.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.LayerNorm, nn.BatchNorm2d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(
                    m.weight, mode='fan_out', nonlinearity='relu')
        if cfg is not None:
            self.load_imagenet(cfg['checkpoint'])
            self._is_init = True

    def load_imagenet(self, path: str) -> Dict[str, list]:
        """Load an ImageNet Conformer checkpoint (heads deleted).

        Returns:
            dict: ``loaded``, ``dropped`` (classifier keys), ``unexpected``
            and ``missing`` key lists (also kept in ``self.load_report``).
        """
        sd = _load_local_state_dict(path)
        dropped = [k for k in _IMAGENET_HEAD_KEYS if sd.pop(k, None)
                   is not None]
        own = self.state_dict()
        unexpected = sorted(k for k in sd if k not in own)
        for k in unexpected:
            sd.pop(k)
        mismatched = sorted(k for k in sd if sd[k].shape != own[k].shape)
        if mismatched:
            raise ValueError(
                f'Conformer: checkpoint {path!r} does not fit this model '
                '(check channel_ratio / embed_dims / num_layers): ' +
                ', '.join(f'{k} {tuple(sd[k].shape)} vs '
                          f'{tuple(own[k].shape)}' for k in mismatched))
        missing = sorted(k for k in own if k not in sd)
        self.load_state_dict(sd, strict=False)
        print_log(f'Conformer: loaded {len(sd)} tensors from {path}; '
                  f'deleted classifier keys {dropped}', logger='current')
        if unexpected:
            print_log(f'Conformer: UNEXPECTED keys in {path} (ignored): '
                      f'{unexpected}', logger='current',
                      level=logging.WARNING)
        if missing:
            print_log(f'Conformer: MISSING keys in {path} (left at their '
                      f'random init): {missing}', logger='current',
                      level=logging.WARNING)
        self.load_report = dict(loaded=sorted(sd), dropped=dropped,
                                unexpected=unexpected, missing=missing)
        return self.load_report
