"""WeakTr stage-2 decode head: Segmenter mask transformer trained with the
gradient-clipping loss ("gradient clipping decoder", GCD).

Paper: L. Zhu et al., "WeakTr: Exploring Plain Vision Transformer for
Weakly-supervised Semantic Segmentation", arXiv 2304.01184, Sec. 3.3.
Original code: github.com/hustvl/WeakTr (commit 3457ad3),
``OnlineRetraining/segm/model/decoder.py`` (``MaskTransformer``,
``MultiMaskTransformer``, ``GradientClipping``) and
``segm/model/segmenter.py`` (``Segmenter``: upsample to the padded size,
crop). Written fresh for wsss_zoo on mmseg's ``SegmenterMaskTransformerHead``
(same layers, parameters and names); parity-tested against fixtures produced
by the official code (``tests/test_weaktr_gcd_parity.py``).
"""
from typing import List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.model.weight_init import constant_init, trunc_normal_
from torch import Tensor

from mmseg.models.decode_heads.segmenter_mask_head import \
    SegmenterMaskTransformerHead
from mmseg.registry import MODELS
from mmseg.utils import ConfigType, SampleList

from ..utils.attention import SegmenterSelfAttention
from .segmenter_upsample import SegmenterUpsampleMixin


@MODELS.register_module()
class WeakTrGCDHead(SegmenterUpsampleMixin, SegmenterMaskTransformerHead):
    """Segmenter mask-transformer decoder of WeakTr's online retraining.

    ``forward`` (patch features (B, C_in, h, w) -> masks (B, K, h, w)), as the
    original ``MaskTransformer``: ``dec_proj`` (Linear C_in -> D) on the patch
    tokens; append the K class embeddings ``cls_emb`` AFTER the patches;
    ``num_layers`` pre-norm transformer layers; ``decoder_norm``; split;
    ``patch_proj`` / ``classes_proj`` (bias-free); L2-normalise along D (plain
    division by the norm, no epsilon, as the original; mmseg's parent uses
    ``F.normalize``); masks = patches . classes^T (B, h*w, K); ``mask_norm``
    (LayerNorm over the K classes); reshape to (B, K, h, w).

    Training: the masks are upsampled bilinearly to the padded size
    ``(h * patch_size, w * patch_size)`` and cropped bottom/right to the label
    size (Segmenter's wrapper), then ``loss_decode``, by default
    :class:`GradientClippingLoss` (WeakTr's clipped CE). Its per-batch
    statistics are added to the loss dict as ``gc_mean_ce``, ``gc_active``
    and ``gc_clipped_frac`` (logged only: no ``loss`` in the names).

    Test: the same upsample-and-crop. With ``test_mix_weight`` = w the
    prediction is the official ``--backbone multi --weight w`` score
    ``w * softmax(masks1) + softmax(masks2)`` (``masks1``: the decoder stopped
    before its last layer, through the shared norm and projections; see
    :meth:`forward_multi`), computed per forward window: the original mixes
    after merging the sliding windows and resizing to the image, so with
    overlapping windows or a final resize the result differs slightly.

    Differences from mmseg's parent, for parity: the attention layers are
    :class:`~wsss_zoo.models.utils.attention.SegmenterSelfAttention` (fused
    SDPA; explicit in the original's op order under
    ``materialize_all_attention``); the default dropout is the
    original's 0.1 (attention, projection and MLP), drop-path 0, and
    ``init_weights`` draws the original initialisation (``patch_proj`` /
    ``classes_proj`` ~ N(0, 1/D), Linear layers incl. the attention
    in-projection ~ trunc N(0, 0.02)).

    Args:
        in_channels (int): width of the backbone features (C_in).
        num_layers (int): decoder layers (original config: 2). Default: 2.
        num_heads (int): attention heads; the original factory uses
            ``embed_dims // 64``. Default: 6.
        embed_dims (int): decoder width D (original: the encoder width).
            Default: 384.
        mlp_ratio (int): MLP hidden width / D. Default: 4.
        drop_path_rate (float): stochastic depth (original 0). Default: 0.0.
        drop_rate (float): dropout after attention projection and in the MLP
            (original ``dropout`` 0.1). Default: 0.1.
        attn_drop_rate (float): dropout on attention maps (original 0.1).
            Default: 0.1.
        num_fcs (int): FFN layers. Default: 2.
        qkv_bias (bool): bias of the qkv projection. Default: True.
        act_cfg (dict): FFN activation. Default: dict(type='GELU').
        norm_cfg (dict): LayerNorm config; eps 1e-5 as the original.
            Default: dict(type='LN').
        init_std (float): std of the truncated-normal init. Default: 0.02.
        patch_size (int): backbone patch size; the masks are upsampled to
            ``h * patch_size`` x ``w * patch_size``, then cropped.
            Default: 16.
        test_mix_weight (float, optional): weight w of the intermediate
            masks in the two-output test score (official default 0.8);
            None predicts with the final masks only. Default: None.
        init_cfg (dict, optional): mmengine init config, applied after the
            original initialisation. Default: None.
        **kwargs: passed to ``BaseDecodeHead`` (``num_classes``, ``channels``
            (defaults to ``embed_dims``; unused), ``loss_decode`` (default
            ``GradientClippingLoss(start_value=1.2, window_size=120)``),
            ``ignore_index``, ``align_corners``, ...).
    """

    def __init__(self,
                 in_channels: int,
                 num_layers: int = 2,
                 num_heads: int = 6,
                 embed_dims: int = 384,
                 mlp_ratio: int = 4,
                 drop_path_rate: float = 0.0,
                 drop_rate: float = 0.1,
                 attn_drop_rate: float = 0.1,
                 num_fcs: int = 2,
                 qkv_bias: bool = True,
                 act_cfg: dict = dict(type='GELU'),
                 norm_cfg: dict = dict(type='LN'),
                 init_std: float = 0.02,
                 patch_size: int = 16,
                 test_mix_weight: Optional[float] = None,
                 init_cfg: Optional[dict] = None,
                 **kwargs):
        if num_layers < 1:
            raise ValueError(
                f'WeakTrGCDHead: num_layers must be >= 1, got {num_layers}')
        if embed_dims % num_heads:
            raise ValueError(
                f'WeakTrGCDHead: embed_dims ({embed_dims}) must be divisible '
                f'by num_heads ({num_heads}); the original uses num_heads = '
                f'embed_dims // 64 = {max(embed_dims // 64, 1)}.')
        if test_mix_weight is not None and test_mix_weight < 0:
            raise ValueError('WeakTrGCDHead: test_mix_weight must be >= 0 '
                             f'(official 0.8) or None, got {test_mix_weight}')
        if kwargs.get('dropout_ratio'):
            raise ValueError(
                'WeakTrGCDHead: dropout_ratio must be 0 (there is no 1x1 '
                'classifier for it to precede); use drop_rate / '
                'attn_drop_rate for the decoder dropout.')
        kwargs['dropout_ratio'] = 0.0
        kwargs.setdefault('channels', embed_dims)
        kwargs.setdefault(
            'loss_decode',
            dict(type='GradientClippingLoss', start_value=1.2,
                 window_size=120))
        super().__init__(
            in_channels=in_channels,
            num_layers=num_layers,
            num_heads=num_heads,
            embed_dims=embed_dims,
            mlp_ratio=mlp_ratio,
            drop_path_rate=drop_path_rate,
            drop_rate=drop_rate,
            attn_drop_rate=attn_drop_rate,
            num_fcs=num_fcs,
            qkv_bias=qkv_bias,
            act_cfg=act_cfg,
            norm_cfg=norm_cfg,
            init_std=init_std,
            init_cfg=init_cfg,
            **kwargs)
        self.embed_dims = embed_dims
        self.patch_size = patch_size
        self.test_mix_weight = test_mix_weight
        # Segmenter's attention (fused, or its exact op order when
        # materialised), same parameters as mmseg's layers
        SegmenterSelfAttention.convert(self.layers)

    def init_weights(self):
        """The original initialisation, then ``init_cfg`` if one is given.

        Linear weights (``dec_proj``, attention in/out projections, MLP) ~
        truncated N(0, init_std), biases 0; LayerNorms 1 / 0; ``cls_emb`` ~
        truncated N(0, init_std); ``patch_proj`` / ``classes_proj`` ~
        N(0, 1/D) (the original ``scale * randn``).
        """
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=self.init_std)
                if m.bias is not None:
                    nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.MultiheadAttention):
                trunc_normal_(m.in_proj_weight, std=self.init_std)
                if m.in_proj_bias is not None:
                    nn.init.constant_(m.in_proj_bias, 0)
            elif isinstance(m, nn.LayerNorm):
                constant_init(m, val=1.0, bias=0.0)
        trunc_normal_(self.cls_emb, std=self.init_std)
        nn.init.normal_(self.patch_proj.weight, std=self.embed_dims**-0.5)
        nn.init.normal_(self.classes_proj.weight, std=self.embed_dims**-0.5)
        if self.init_cfg:  # e.g. Pretrained, applied on top
            super(SegmenterMaskTransformerHead, self).init_weights()

    @torch.jit.ignore
    def no_weight_decay(self):
        """Names excluded from weight decay by the original (wd is 0)."""
        return {'cls_emb'}

    def _tokens(self, inputs) -> Tuple[Tensor, int, int]:
        """Selected backbone map -> ``[dec_proj(patches), cls_emb]``.

        Returns:
            tuple: tokens (B, h*w + K, D) and the grid (h, w).
        """
        x = self._transform_inputs(inputs)
        B, C, h, w = x.shape
        x = x.flatten(2).transpose(1, 2)  # (B, h*w, C_in), row-major
        x = self.dec_proj(x)
        cls_emb = self.cls_emb.expand(B, -1, -1)  # (B, K, D)
        return torch.cat((x, cls_emb), dim=1), h, w

    def _masks(self, z: Tensor, h: int, w: int) -> Tensor:
        """Decoded tokens (B, h*w + K, D) -> masks (B, K, h, w)."""
        z = self.decoder_norm(z)
        K = self.num_classes
        patches = self.patch_proj(z[:, :-K])  # (B, h*w, D)
        cls_seg_feat = self.classes_proj(z[:, -K:])  # (B, K, D)
        # parity: plain division, no eps (the parent uses F.normalize)
        patches = patches / patches.norm(dim=-1, keepdim=True)
        cls_seg_feat = cls_seg_feat / cls_seg_feat.norm(dim=-1, keepdim=True)
        masks = patches @ cls_seg_feat.transpose(1, 2)  # (B, h*w, K)
        masks = self.mask_norm(masks)
        return masks.transpose(1, 2).reshape(z.shape[0], K, h, w)

    def forward(self, inputs) -> Tensor:
        """Decode patch features into patch-level masks.

        Args:
            inputs (tuple[Tensor]): backbone outputs; the selected one is
                (B, C_in, h, w).

        Returns:
            Tensor: mask logits at patch resolution, (B, K, h, w).
        """
        z, h, w = self._tokens(inputs)
        for layer in self.layers:
            z = layer(z)
        return self._masks(z, h, w)

    def forward_multi(self, inputs) -> Tuple[Tensor, Tensor]:
        """The official test-time two-output decoder
        (``MultiMaskTransformer``), with the same weights.

        Args:
            inputs (tuple[Tensor]): as for :meth:`forward`.

        Returns:
            tuple[Tensor, Tensor]: ``masks1`` from the tokens before the last
            layer (the input tokens for a 1-layer decoder) and ``masks2``
            after all layers (= :meth:`forward`), each (B, K, h, w), both
            through ``decoder_norm``, the projections and ``mask_norm``.
        """
        z, h, w = self._tokens(inputs)
        for layer in self.layers[:-1]:
            z = layer(z)
        masks1 = self._masks(z, h, w)
        masks2 = self._masks(self.layers[-1](z), h, w)
        return masks1, masks2

    def predict(self, inputs: Tuple[Tensor], batch_img_metas: List[dict],
                test_cfg: ConfigType) -> Tensor:
        """Logits (or, with ``test_mix_weight``, mixed probabilities) at the
        input size, (B, K, H, W)."""
        if self.test_mix_weight is None:
            return super().predict(inputs, batch_img_metas, test_cfg)
        size = self.target_size(batch_img_metas)
        masks1, masks2 = self.forward_multi(inputs)
        probs1 = self.upsample_and_crop(masks1, size).softmax(dim=1)
        probs2 = self.upsample_and_crop(masks2, size).softmax(dim=1)
        return self.test_mix_weight * probs1 + probs2

    def loss_by_feat(self, seg_logits: Tensor,
                     batch_data_samples: SampleList) -> dict:
        """Upsample to the padded size, crop to the label size, then the
        ``BaseDecodeHead`` losses (:class:`SegmenterUpsampleMixin`), plus
        the clipping statistics of every loss that keeps ``last_stats``.

        Args:
            seg_logits (Tensor): (B, K, h, w) from :meth:`forward`.
            batch_data_samples (list[:obj:`SegDataSample`]): with
                ``gt_sem_seg`` (1, H, W).

        Returns:
            dict[str, Tensor]: ``loss_*`` terms, ``acc_seg`` and, for
            :class:`GradientClippingLoss`, ``gc_mean_ce``, ``gc_active``,
            ``gc_clipped_frac`` (logged, not back-propagated).
        """
        losses = super().loss_by_feat(seg_logits, batch_data_samples)
        loss_modules = self.loss_decode if isinstance(
            self.loss_decode, nn.ModuleList) else [self.loss_decode]
        for module in loss_modules:
            for name, value in getattr(module, 'last_stats', {}).items():
                losses[name] = value
        return losses
