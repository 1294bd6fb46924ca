"""WeakTr stage-1 CAM head: adaptive attention fusion, coarse -> fine CAM.

hustvl/WeakTr at HEAD (the "V3" AAF, commit 535ba45): ``models.py::WeakTr.
forward``, ``AAF.py::AAF``, ``engine.py::train_one_epoch`` and
``generate_attention_maps_ms``. Per image:

1. ``coarse`` = ReLU(Conv3x3(patch tokens)) (B, C, h, w), detached.
2. The adaptive attention fusion (:class:`AdaptiveAttentionFusion`) gives
   one weight in (0, 1) per (head, layer) attention map from the detached
   attention-branch outputs O_l; ``A`` = mean over the L x heads weighted
   (detached) maps, (B, N, N).
3. ``cams`` = CA * coarse, CA = A[:, :C, C:] the class-to-patch rows.
4. ``fine`` = PA @ cams, PA = A[:, C:, C:] the patch-to-patch block.

Training: three multi-label soft-margin terms on the mean over D of the
class tokens, GAP(coarse logits) and GAP(fine), weight 1 each. Because the
coarse CAM and every AAF input are detached, the fine term trains only the
AAF. CAM generation returns ``fine`` (``--patch-attn-refine``, default on).
The refinement stays in the head (it is not a refiner): PA is the
AAF-weighted fusion the head computes, not a plain sum of attention maps
like MCTformer's :class:`PatchAffinityRefiner`.
"""
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.model import BaseModule
from torch import Tensor

from mmseg.registry import MODELS
from ..utils.attention import normalize_layer_indices

_CAM_MODES = ('fused', 'patchcam', 'cross')
_POOLS = ('avg', 'max')
_LOSS_TERMS = ('cls_token', 'coarse_cam', 'fine_cam')


class AdaptiveAttentionFusion(nn.Module):
    """WeakTr V3 AAF: per-image weights of the L x heads attention maps.

    Channel ``k = head * L + layer`` (head-major, as the original stacks
    them). The "head" features of a layer are a STRIDED split of its
    attention-branch output: head ``hd`` owns channels ``d * heads + hd``
    (not the contiguous slice a real attention head uses); this is the
    original's layout and checkpoints depend on it.

    weights = sigmoid(W2 relu(W1 s)), s_k = f(pool_N(O_l[:, :, hd::heads])),
    f = Linear(dh -> dh / feat_reduction) then Linear(-> 1), no activation
    between; pooling over all N tokens (class tokens included), max or mean.

    Args:
        num_layers (int): fused layers L.
        num_heads (int): attention heads per layer.
        head_dims (int): D / heads, features per "head".
        reduction (float): hidden size ``int(L * heads / reduction)`` of the
            weight MLP. Default: 4 (``main.py``; the released models: 8).
        feat_reduction (int): hidden size ``int(head_dims / feat_reduction)``
            of the feature MLP. Default: 8.
        pool (str): 'avg' or 'max' pooling over tokens. Default: 'avg'
            (``main.py``; the released models: 'max').
    """

    def __init__(self,
                 num_layers: int,
                 num_heads: int,
                 head_dims: int,
                 reduction: float = 4.,
                 feat_reduction: int = 8,
                 pool: str = 'avg'):
        super().__init__()
        if pool not in _POOLS:
            raise ValueError(f'AdaptiveAttentionFusion: pool must be one of '
                             f'{_POOLS}, got {pool!r}')
        channels = num_layers * num_heads
        hidden = int(channels / reduction)
        feat_hidden = int(head_dims / feat_reduction)
        if hidden < 1 or feat_hidden < 1:
            raise ValueError(
                f'AdaptiveAttentionFusion: reduction {reduction} leaves '
                f'{hidden} hidden units for {channels} maps and '
                f'feat_reduction {feat_reduction} leaves {feat_hidden} for '
                f'{head_dims} features; lower them so both are >= 1')
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.pool = pool
        # names and order as AAF.py (checkpoint keys attn_head_ffn.{0,2},
        # attn_feat_ffn.{0,1}); PyTorch default init, as the original
        self.attn_head_ffn = nn.Sequential(
            nn.Linear(channels, hidden, bias=False), nn.ReLU(inplace=True),
            nn.Linear(hidden, channels, bias=False), nn.Sigmoid())
        self.attn_feat_ffn = nn.Sequential(
            nn.Linear(head_dims, feat_hidden), nn.Linear(feat_hidden, 1))

    def fusion_weights(self, attn_outs: Sequence[Tensor]) -> Tensor:
        """Weights of the maps from the attention-branch outputs.

        Args:
            attn_outs (Sequence[Tensor]): per fused layer, O_l (B, N, D).

        Returns:
            Tensor: (B, heads * L) in (0, 1), channel ``head * L + layer``.
        """
        pooled = []
        for out in attn_outs:
            B, N, D = out.shape
            groups = out.reshape(B, N, D // self.num_heads, self.num_heads)
            if self.pool == 'max':
                pooled.append(groups.amax(dim=1))  # (B, dh, heads)
            else:
                pooled.append(groups.mean(dim=1))
        pooled = torch.stack(pooled, dim=1)  # (B, L, dh, heads)
        B, L, dh, heads = pooled.shape
        pooled = pooled.permute(0, 3, 1, 2).reshape(B, heads * L, dh)
        scores = self.attn_feat_ffn(pooled).squeeze(-1)  # (B, heads * L)
        return self.attn_head_ffn(scores)

    def forward(self, attn: Sequence[Tensor],
                attn_outs: Sequence[Tensor]) -> Dict[str, Tensor]:
        """Fuse attention maps.

        Args:
            attn (Sequence[Tensor]): per fused layer, (B, heads, N, N).
            attn_outs (Sequence[Tensor]): per fused layer, (B, N, D).

        Returns:
            dict: ``attn`` (B, N, N), the plain mean over the L x heads
            weighted maps (weights not normalised); ``weights`` (B, heads
            * L), channel ``head * L + layer``.
        """
        weights = self.fusion_weights(attn_outs)
        B, heads, N, _ = attn[0].shape
        L = len(attn)
        per_layer = weights.reshape(B, heads, L)
        fused = sum(
            torch.einsum('bh,bhnm->bnm', per_layer[:, :, i], maps)
            for i, maps in enumerate(attn))
        return dict(attn=fused / (heads * L), weights=weights)


@MODELS.register_module()
class WeakTrHead(BaseModule):
    """WeakTr stage-1 head (coarse CAM conv + adaptive attention fusion).

    Needs the features of :class:`~wsss_zoo.models.backbones.WeakTrViT`
    with the attention maps (``attn``) and attention-branch outputs
    (``attn_out``) of the fused layers; :meth:`loss_attn_layers` and
    :meth:`cam_attn_layers` name them, so ``CAMSegmentor`` captures exactly
    those (all layers, as the original, unless ``fuse_layers`` is set).

    Args:
        num_classes (int): foreground classes C (= class tokens).
        in_channels (int): token dims D. Default: 384.
        num_layers (int): encoder layers (must match the backbone).
            Default: 12.
        num_heads (int): attention heads of the encoder. Default: 6.
        reduction (float): AAF weight-MLP reduction. Default: 4 (``main.py``
            default; the released models use 8).
        feat_reduction (int): AAF feature-MLP reduction. Default: 8.
        pool (str): AAF token pooling, 'avg' or 'max'. Default: 'avg'
            (``main.py`` default; the released models use 'max').
        fuse_layers (Sequence[int], optional): layers whose maps are fused
            (negative indices allowed). None: all layers (the original).
        cam_mode (str): CAM of :meth:`predict_cams` before refinement
            (``--attention-type``): 'fused' (CA * coarse), 'patchcam'
            (coarse) or 'cross' (CA). Training always uses 'fused', as the
            original. Default: 'fused'.
        patch_attn_refine (bool): refine the CAM with the fused
            patch-to-patch attention (``--patch-attn-refine``). Default:
            True.
        loss_weights (dict, optional): weights of ``cls_token``,
            ``coarse_cam``, ``fine_cam``. Default: 1 each.
        init_cfg (dict, optional): mmengine init config. Default: None.
    """

    def __init__(self,
                 num_classes: int,
                 in_channels: int = 384,
                 num_layers: int = 12,
                 num_heads: int = 6,
                 reduction: float = 4.,
                 feat_reduction: int = 8,
                 pool: str = 'avg',
                 fuse_layers: Optional[Sequence[int]] = None,
                 cam_mode: str = 'fused',
                 patch_attn_refine: bool = True,
                 loss_weights: Optional[dict] = None,
                 init_cfg: Optional[dict] = None):
        super().__init__(init_cfg=init_cfg)
        if cam_mode not in _CAM_MODES:
            raise ValueError(f'WeakTrHead: cam_mode must be one of '
                             f'{_CAM_MODES}, got {cam_mode!r}')
        if in_channels % num_heads:
            raise ValueError(f'WeakTrHead: in_channels {in_channels} is not '
                             f'divisible by num_heads {num_heads}')
        unknown = sorted(set(loss_weights or {}) - set(_LOSS_TERMS))
        if unknown:
            raise ValueError(f'WeakTrHead: unknown loss_weights keys '
                             f'{unknown}; allowed: {list(_LOSS_TERMS)}')
        if fuse_layers is None:
            layers = list(range(num_layers))
        else:
            layers = normalize_layer_indices(fuse_layers, num_layers)
            if not layers:
                raise ValueError('WeakTrHead: fuse_layers is empty; give at '
                                 'least one layer or None for all')
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.fuse_layers = layers
        self.cam_mode = cam_mode
        self.patch_attn_refine = patch_attn_refine
        self.loss_weights = {k: 1.0 for k in _LOSS_TERMS}
        self.loss_weights.update(loss_weights or {})
        # the original's ``head``: PyTorch default Conv2d init
        self.coarse_conv = nn.Conv2d(
            in_channels, num_classes, kernel_size=3, stride=1, padding=1)
        self.aaf = AdaptiveAttentionFusion(
            num_layers=len(layers),
            num_heads=num_heads,
            head_dims=in_channels // num_heads,
            reduction=reduction,
            feat_reduction=feat_reduction,
            pool=pool)

    # ------------------------------------------------------------------
    def _check_depth(self, num_layers: int):
        if num_layers != self.num_layers:
            raise ValueError(
                f'WeakTrHead was built for num_layers={self.num_layers} but '
                f'the backbone has {num_layers} layers; set the head\'s '
                'num_layers to the backbone depth')

    def loss_attn_layers(self, num_layers: int) -> List[int]:
        """Layers whose attention the loss needs (the fused ones)."""
        self._check_depth(num_layers)
        return list(self.fuse_layers)

    def cam_attn_layers(self, num_layers: int) -> List[int]:
        """Layers whose attention :meth:`predict_cams` needs (the fused
        ones, for every ``cam_mode``: the refinement uses them too)."""
        self._check_depth(num_layers)
        return list(self.fuse_layers)

    # ------------------------------------------------------------------
    def coarse_logits_map(self, feats: dict) -> Tensor:
        """3x3 conv on the patch-token grid, (B, C, h, w), before ReLU."""
        tokens = feats['patch_tokens']  # (B, P, D)
        h, w = feats['hw']
        B, P, D = tokens.shape
        grid = tokens.transpose(1, 2).reshape(B, D, h, w)
        return self.coarse_conv(grid)

    def fuse_attention(self, feats: dict) -> Dict[str, Tensor]:
        """AAF on the detached maps and branch outputs of the fused layers.

        Returns:
            dict: ``attn`` (B, N, N) fused map, ``weights`` (B, heads * L').
        """
        attn, outs = feats.get('attn', {}), feats.get('attn_out')
        if outs is None:
            raise KeyError(
                'WeakTrHead needs the attention-branch outputs '
                "feats['attn_out'] of the fused layers: use the WeakTrViT "
                'backbone')
        missing = [i for i in self.fuse_layers
                   if i not in attn or i not in outs]
        if missing:
            raise KeyError(
                f'WeakTrHead fuses layers {self.fuse_layers} but the maps / '
                f'branch outputs of {missing} were not captured: pass '
                'capture_layers=cam_head.loss_attn_layers(num_layers) (or '
                'cam_attn_layers) to the backbone')
        return self.aaf([attn[i].detach() for i in self.fuse_layers],
                        [outs[i].detach() for i in self.fuse_layers])

    def _cams(self, feats: dict, cam_mode: str) -> Dict[str, Tensor]:
        """Coarse map, fused attention, unrefined and fine CAMs."""
        C = self.num_classes
        coarse_map = self.coarse_logits_map(feats)  # (B, C, h, w)
        B, _, h, w = coarse_map.shape
        fusion = self.fuse_attention(feats)
        fused = fusion['attn']  # (B, N, N), N = C + P
        cross = fused[:, :C, C:].reshape(B, C, h, w)  # class -> patch
        patch_attn = fused[:, C:, C:]  # (B, P, P), rows = query patches
        coarse = F.relu(coarse_map.detach())
        if cam_mode == 'fused':
            cams = cross * coarse
        elif cam_mode == 'patchcam':
            cams = coarse
        else:
            cams = cross
        # fine[b, c, i] = sum_j PA[b, i, j] cams[b, c, j]
        fine = torch.bmm(cams.reshape(B, C, h * w), patch_attn.transpose(1, 2))
        return dict(
            coarse_map=coarse_map,
            cams=cams,
            fine=fine.reshape(B, C, h, w),
            patch_attn=patch_attn,
            weights=fusion['weights'])

    def train_logits(self, feats: dict) -> Dict[str, Tensor]:
        """Classification logits of the three terms (``cam_mode`` 'fused').

        Args:
            feats (dict): encoder features with ``cls_tokens`` (B, C, D),
                ``patch_tokens`` (B, P, D), ``hw``, and ``attn`` /
                ``attn_out`` of :meth:`loss_attn_layers`.

        Returns:
            dict[str, Tensor]: ``cls_token`` (mean over D of the class
            tokens), ``coarse_cam`` (GAP of the coarse logits map),
            ``fine_cam`` (GAP of the fine CAM), each (B, C).
        """
        out = self._cams(feats, 'fused')
        return dict(
            cls_token=feats['cls_tokens'].mean(dim=-1),
            coarse_cam=out['coarse_map'].mean(dim=(2, 3)),
            fine_cam=out['fine'].mean(dim=(2, 3)))

    def loss(self, feats: dict, img_labels: Tensor) -> Dict[str, Tensor]:
        """The three multi-label soft-margin losses of ``train_one_epoch``.

        Args:
            feats (dict): see :meth:`train_logits`.
            img_labels (Tensor): (B, C) multi-hot, no background.

        Returns:
            dict[str, Tensor]: ``loss_cls_token``, ``loss_coarse_cam``,
            ``loss_fine_cam`` (weighted).
        """
        if img_labels.dim() != 2 or img_labels.shape[1] != self.num_classes:
            raise ValueError(
                f'WeakTrHead: img_labels must be (B, {self.num_classes}) '
                f'multi-hot, got shape {tuple(img_labels.shape)}')
        labels = img_labels.float()
        logits = self.train_logits(feats)
        return {
            f'loss_{name}': self.loss_weights[name] *
            F.multilabel_soft_margin_loss(logits[name], labels)
            for name in _LOSS_TERMS
        }

    # ------------------------------------------------------------------
    def predict_cams(self, feats: dict) -> Dict[str, Tensor]:
        """Raw CAMs as ``generate_attention_maps_ms`` computes per view.

        Args:
            feats (dict): encoder features with ``attn`` / ``attn_out`` of
                :meth:`cam_attn_layers`.

        Returns:
            dict: ``cams`` (B, C, h, w), the refined (fine) CAM, or the
            unrefined one without ``patch_attn_refine``; ``logits`` (B, C)
            mean over D of the class tokens; ``cams_unrefined`` (B, C, h, w)
            (``model(x, return_att=True)``'s CAM); ``patch_attn`` (B, P, P)
            fused patch-to-patch attention; ``fusion_weights`` (B, heads *
            L).
        """
        out = self._cams(feats, self.cam_mode)
        return dict(
            cams=out['fine'] if self.patch_attn_refine else out['cams'],
            logits=feats['cls_tokens'].mean(dim=-1),
            cams_unrefined=out['cams'],
            patch_attn=out['patch_attn'],
            fusion_weights=out['weights'])
