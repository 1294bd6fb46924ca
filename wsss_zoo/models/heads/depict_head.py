"""DEPICT decode head (mask transformer built from subspace attention).

Paper: Q. Wen et al., "Rethinking Decoders for Transformer-based Semantic
Segmentation: A Compression Perspective", NeurIPS 2024 (arXiv 2411.03033).
Original code: github.com/QishuaiWen/DEPICT (commit 6c66e2b),
``model/decoder.py`` (``MaskTransformer``) and ``model/dec_blocks.py``
(``PreNorm``, ``Attention``, ``Transformer``), hosted in Segmenter
(github.com/rstrudel/segmenter, ``segm/model/segmenter.py`` for the
upsample-and-crop wrapper). Written fresh for wsss_zoo; parity-tested against
fixtures produced by the official code (``tests/test_depict_parity.py``).
"""
from typing import Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import build_norm_layer
from mmengine.model import ModuleList
from mmengine.model.weight_init import constant_init, trunc_normal_
from torch import Tensor

from mmseg.models.decode_heads.decode_head import BaseDecodeHead
from mmseg.registry import MODELS

from .segmenter_upsample import SegmenterUpsampleMixin

_MODES = ('sa', 'ca')


class SubspaceAttentionLayer(nn.Module):
    """One DEPICT layer: pre-LayerNorm + multi-head subspace attention.

    A single matrix ``U = proj`` (heads x head_dims, D) plays query, key and
    value (``w = LN(x) U^T``, split into heads) and, untransposed, the output
    projection; the result is scaled by the learnable scalar ``step_size``.
    No biases, no MLP. The layer returns the *increment*; the caller adds the
    residual (as the original ``Transformer`` does).

    - self-attention (MSSA, ``query=None``):
      ``step_size * merge(softmax(w w^T / sqrt(p)) w) U``;
    - cross-attention (MSCA): the raw (un-normalised) ``query`` is projected
      with the same ``U``; keys = values = ``w`` from the normed ``x``.

    Args:
        embed_dims (int): token width D.
        num_heads (int): number of subspaces (heads).
        head_dims (int): width p of each subspace (100 for MSSA, 50 for MSCA
            in DEPICT; independent of D).
        attn_drop_rate (float): dropout on the attention matrix.
            Default: 0.0.
        norm_cfg (dict): config of the pre-norm. Default: dict(type='LN').
    """

    def __init__(self,
                 embed_dims: int,
                 num_heads: int,
                 head_dims: int,
                 attn_drop_rate: float = 0.0,
                 norm_cfg: dict = dict(type='LN')):
        super().__init__()
        self.num_heads = num_heads
        self.head_dims = head_dims
        self.scale = head_dims**-0.5
        self.attn_drop_rate = attn_drop_rate
        self.norm = build_norm_layer(norm_cfg, embed_dims)[1]
        self.proj = nn.Parameter(
            torch.empty(num_heads * head_dims, embed_dims))
        self.step_size = nn.Parameter(torch.empty(1))
        self.attn_drop = nn.Dropout(attn_drop_rate)
        # fused (scaled_dot_product_attention) unless the maps are captured
        self.fused_attn = True
        self.capture = False
        self.attn_map: Optional[Tensor] = None

    def reset_parameters(self):
        """Original init: ``proj ~ N(0, 1/D)``, ``step_size ~ N(0, 1)``.

        (Not named ``init_weights``, so mmengine's recursive init does not
        draw the values a second time.)
        """
        nn.init.normal_(self.proj, std=self.proj.shape[1]**-0.5)
        nn.init.normal_(self.step_size)
        constant_init(self.norm, val=1.0, bias=0.0)

    def _split_heads(self, x: Tensor) -> Tensor:
        """(B, N, heads * p) -> (B, heads, N, p)."""
        B, N, _ = x.shape
        return x.view(B, N, self.num_heads, self.head_dims).transpose(1, 2)

    def forward(self, x: Tensor, query: Optional[Tensor] = None) -> Tensor:
        """Compute the increment of one layer.

        Args:
            x (Tensor): tokens, (B, N, D); normed here by ``self.norm``.
            query (Tensor, optional): class queries (B, M, D), not normed.
                None for self-attention.

        Returns:
            Tensor: ``step_size * attention output``, (B, N, D) for
            self-attention, (B, M, D) for cross-attention.
        """
        w = self._split_heads(self.norm(x) @ self.proj.t())
        q = w if query is None else self._split_heads(query @ self.proj.t())
        if self.fused_attn and not self.capture:
            drop_p = self.attn_drop_rate if self.training else 0.0
            out = F.scaled_dot_product_attention(
                q, w, w, dropout_p=drop_p, scale=self.scale)
            self.attn_map = None
        else:
            # same op order as the original: (q w^T) * scale, softmax
            attn = (q @ w.transpose(-2, -1) * self.scale).softmax(dim=-1)
            self.attn_map = attn if self.capture else None
            out = self.attn_drop(attn) @ w
        B, _, M, _ = out.shape
        out = out.transpose(1, 2).reshape(B, M, -1)  # merge heads
        return self.step_size * (out @ self.proj)


@MODELS.register_module()
class DEPICTHead(SegmenterUpsampleMixin, BaseDecodeHead):
    """DEPICT mask-transformer decode head (DEPICT-SA / DEPICT-CA).

    ``forward`` (patch features (B, D, h, w) -> masks (B, C, h, w)):

    - ``mode='sa'``: ``[patch tokens, cls_emb]`` -> ``num_layers`` MSSA
      layers -> ``decoder_norm`` -> split into patches and classes;
    - ``mode='ca'``: patch tokens -> ``num_layers`` MSSA layers ->
      ``patch_norm``; class queries ``cls_emb`` -> ``ca_num_layers`` MSCA
      layers (keys/values: the normed patches) -> ``class_norm``;
    - both: L2-normalise patches and classes (no epsilon, as the original),
      cosine similarities (B, N, C) -> ``mask_norm`` (LayerNorm over the
      classes) -> reshape to (B, C, h, w).

    Upsampling differs from mmseg's ``BaseDecodeHead`` on purpose: like the
    official Segmenter wrapper, ``predict_by_feat`` and ``loss_by_feat``
    (:class:`SegmenterUpsampleMixin`) upsample the patch-level masks
    bilinearly to the *padded* size ``(h * patch_size, w * patch_size)``
    (the size mmseg's ViT reaches by zero-padding bottom/right) and then
    crop the bottom/right to the target size (``img_shape``/``pad_shape``
    for prediction, the label size for the loss). Resizing straight to an
    input size that is not a multiple of the patch size is not equivalent.

    No encoder-to-decoder projection exists, so ``in_channels`` must equal
    ``embed_dims``. Use with ``SegmenterVisionTransformer`` (mmseg's ViT
    with Segmenter's attention; ``out_indices`` = last layer,
    ``final_norm=True``); see ``configs/depict/``.

    Args:
        in_channels (int): channels of the input feature map (= D).
        num_layers (int): number of self-attention (MSSA) layers.
        num_heads (int): number of heads (subspaces) of every layer.
        embed_dims (int): decoder width D; must equal ``in_channels``.
        mode (str): ``'sa'`` (classes and patches in one self-attention
            sequence) or ``'ca'`` (classes updated by cross-attention).
            Default: 'sa'.
        dropout_ratio (float): must be 0: DEPICT has no 1x1 classifier for
            ``BaseDecodeHead``'s dropout to precede (use ``attn_drop_rate``).
            Default: 0.0.
        attn_drop_rate (float): dropout on attention matrices (the original
            ``dropout``). Default: 0.0.
        sa_head_dims (int): head width of the MSSA layers (literal 100 in
            the original). Default: 100.
        ca_head_dims (int): head width of the MSCA layers (literal 50).
            Default: 50.
        ca_num_layers (int): number of MSCA layers in mode 'ca' (literal 3).
            Default: 3.
        patch_size (int): backbone patch size: sets the padded size the
            masks are upsampled to before cropping. Default: 16.
        norm_cfg (dict): config of every LayerNorm (eps 1e-5 as the
            original). Default: dict(type='LN').
        init_std (float): std of the truncated-normal ``cls_emb`` init.
            Default: 0.02.
        init_cfg (dict, optional): mmengine init config (e.g.
            ``dict(type='Pretrained', checkpoint=PATH)``), applied after the
            DEPICT initialisation. Default: None.
        **kwargs: passed to ``BaseDecodeHead`` (``num_classes``, ``channels``
            (defaults to ``embed_dims``; unused), ``loss_decode``,
            ``ignore_index``, ``align_corners``, ...).
    """

    def __init__(self,
                 in_channels: int,
                 num_layers: int,
                 num_heads: int,
                 embed_dims: int,
                 mode: str = 'sa',
                 dropout_ratio: float = 0.0,
                 attn_drop_rate: float = 0.0,
                 sa_head_dims: int = 100,
                 ca_head_dims: int = 50,
                 ca_num_layers: int = 3,
                 patch_size: int = 16,
                 norm_cfg: dict = dict(type='LN'),
                 init_std: float = 0.02,
                 init_cfg: Optional[dict] = None,
                 **kwargs):
        if mode not in _MODES:
            raise ValueError(
                f"DEPICTHead: mode must be one of {_MODES} ('sa': classes "
                "join the patch self-attention, 'ca': classes updated by "
                f'cross-attention), got {mode!r}')
        if in_channels != embed_dims:
            raise ValueError(
                f'DEPICTHead: in_channels ({in_channels}) must equal '
                f'embed_dims ({embed_dims}): DEPICT has no projection from '
                'the encoder width to the decoder width. Set embed_dims to '
                "the backbone's embed_dims.")
        if dropout_ratio:
            raise ValueError(
                f'DEPICTHead: dropout_ratio must be 0, got {dropout_ratio}: '
                'DEPICT has no 1x1 classifier for it to precede. Use '
                'attn_drop_rate for dropout on the attention matrices.')
        kwargs.setdefault('channels', embed_dims)
        super().__init__(
            in_channels=in_channels,
            dropout_ratio=0.0,
            init_cfg=init_cfg,
            **kwargs)
        delattr(self, 'conv_seg')  # masks come from cosine similarities

        self.mode = mode
        self.patch_size = patch_size
        self.init_std = init_std

        def stack(depth, head_dims):
            return ModuleList([
                SubspaceAttentionLayer(embed_dims, num_heads, head_dims,
                                       attn_drop_rate, norm_cfg)
                for _ in range(depth)
            ])

        self.cls_emb = nn.Parameter(
            torch.zeros(1, self.num_classes, embed_dims))
        self.layers = stack(num_layers, sa_head_dims)
        if mode == 'sa':
            self.decoder_norm = build_norm_layer(norm_cfg, embed_dims)[1]
        else:
            self.cross_layers = stack(ca_num_layers, ca_head_dims)
            self.patch_norm = build_norm_layer(norm_cfg, embed_dims)[1]
            self.class_norm = build_norm_layer(norm_cfg, embed_dims)[1]
        self.mask_norm = build_norm_layer(norm_cfg, self.num_classes)[1]

    def init_weights(self):
        """The original initialisation, then ``init_cfg`` if one is given.

        ``cls_emb`` ~ truncated N(0, init_std); every layer's ``proj`` ~
        N(0, 1/D) and ``step_size`` ~ N(0, 1) (random sign, as the original);
        LayerNorms weight 1, bias 0. mmseg's default head init (normal on
        ``conv_seg``) does not apply: this head has no ``conv_seg``.
        """
        trunc_normal_(self.cls_emb, std=self.init_std)
        for m in self.modules():
            if isinstance(m, SubspaceAttentionLayer):
                m.reset_parameters()
            elif isinstance(m, nn.LayerNorm):
                constant_init(m, val=1.0, bias=0.0)
        if self.init_cfg:  # e.g. Pretrained, applied on top
            super().init_weights()

    @torch.jit.ignore
    def no_weight_decay(self):
        """Names excluded from weight decay by the original (wd is 0)."""
        return {'cls_emb'}

    def forward(self, inputs) -> Tensor:
        """Decode patch features into patch-level masks.

        Args:
            inputs (tuple[Tensor]): backbone outputs; the selected one is
                (B, D, h, w), D = ``embed_dims``.

        Returns:
            Tensor: mask logits at patch resolution, (B, C, h, w).
        """
        x = self._transform_inputs(inputs)
        B, D, h, w = x.shape
        x = x.flatten(2).transpose(1, 2)  # (B, N, D), N = h * w, row-major
        cls_emb = self.cls_emb.expand(B, -1, -1)  # (B, C, D)

        if self.mode == 'sa':
            z = torch.cat((x, cls_emb), dim=1)  # (B, N + C, D)
            for layer in self.layers:
                z = z + layer(z)
            z = self.decoder_norm(z)
            patches, cls_seg_feat = z[:, :h * w], z[:, h * w:]
        else:
            for layer in self.layers:
                x = x + layer(x)
            patches = self.patch_norm(x)
            for layer in self.cross_layers:
                cls_emb = cls_emb + layer(patches, cls_emb)
            cls_seg_feat = self.class_norm(cls_emb)

        # parity: plain division, no eps (mmseg's head uses F.normalize)
        patches = patches / patches.norm(dim=-1, keepdim=True)
        cls_seg_feat = cls_seg_feat / cls_seg_feat.norm(dim=-1, keepdim=True)

        masks = patches @ cls_seg_feat.transpose(1, 2)  # (B, N, C)
        masks = self.mask_norm(masks)
        return masks.transpose(1, 2).reshape(B, self.num_classes, h, w)

    def get_attention_maps(self, inputs) -> Dict[str, Tensor]:
        """Run ``forward`` on the explicit attention path, keep the maps.

        Args:
            inputs (tuple[Tensor]): as for :meth:`forward`.

        Returns:
            dict[str, Tensor]: ``seg_logits`` (B, C, h, w) (same as
            ``forward``); ``self_attn`` (L, B, heads, T, T) with T = N + C in
            mode 'sa' and T = N in mode 'ca'; in mode 'ca' also
            ``cross_attn`` (ca_num_layers, B, heads, C, N).
        """
        stacks = {'self_attn': self.layers}
        if self.mode == 'ca':
            stacks['cross_attn'] = self.cross_layers
        all_layers = [m for layers in stacks.values() for m in layers]
        for layer in all_layers:
            layer.capture = True
        try:
            results = dict(seg_logits=self.forward(inputs))
            for name, layers in stacks.items():
                results[name] = torch.stack([m.attn_map for m in layers])
        finally:
            for layer in all_layers:
                layer.capture = False
                layer.attn_map = None
        return results
