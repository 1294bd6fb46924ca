"""MCTformer CAM head: class-token logits, class-to-patch attention CAMs,
the V2 / MCTformer+ PatchCAM branch and their losses.

Xu et al., CVPR 2022 (V1, V2) and TPAMI 2024 (MCTformer+),
xulianuwa/MCTformer ``models.py`` (``forward``) and ``engine.py``
(``train_one_epoch``). The code, not the paper's equations, is reproduced:

* ``cls_logits`` = mean over D of each final class token (no final norm);
* V2: ``patch_logits`` = global average pool of a 3x3 conv (D -> C) on the
  patch-token grid; MCTformer+: global weighted ranking pooling (per class,
  scores sorted descending, weights ``decay ** k``, weighted mean);
* loss = MLSM(cls) [+ MLSM(patch)] [+ w * CCT], MLSM =
  ``F.multilabel_soft_margin_loss`` (mean);
* CAMs: ``mtatt`` = head-averaged class-to-patch attention of the last K
  layers, SUMMED (V1/V2) or MEANED (MCTformer+); PatchCAM F = ReLU(conv map,
  detached); 'fused' = mtatt * F (V2) or sqrt(mtatt * F) (MCTformer+),
  'patchcam' = F, 'mct' = mtatt.
"""
from typing import Dict, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.model import BaseModule
from torch import Tensor

from mmseg.registry import MODELS

_VERSIONS = ('v1', 'v2', 'plus')
_CAM_MODES = ('fused', 'patchcam', 'mct')
_LOSS_TERMS = dict(v1=('cls', ), v2=('cls', 'patch'),
                   plus=('cls', 'patch', 'cct'))
_DEFAULT_CAM_LAYERS = dict(v1=3, v2=3, plus=12)  # run.sh / run_mct_plus.sh
_V1_KEPT_LAYERS = 12


def multilabel_soft_margin(logits: Tensor, labels: Tensor) -> Tensor:
    """``F.multilabel_soft_margin_loss`` (mean), as the original engine."""
    return F.multilabel_soft_margin_loss(logits, labels)


def ranking_weighted_pool(maps: Tensor, decay: float) -> Tensor:
    """Global weighted ranking pooling of MCTformer+.

    Args:
        maps (Tensor): (B, C, h, w).
        decay (float): weight of the k-th largest score is ``decay ** k``.

    Returns:
        Tensor: (B, C).
    """
    scores = maps.flatten(2)  # (B, C, P)
    P = scores.shape[-1]
    ranked = scores.sort(dim=-1, descending=True).values
    weights = torch.logspace(0, P - 1, P, base=decay, device=maps.device)
    return (ranked * weights).sum(dim=-1) / weights.sum()


def contrastive_class_token_loss(tokens: Tensor, labels: Tensor) -> Tensor:
    """CCT loss of MCTformer+ (HEAD ``engine.train_one_epoch``).

    Per block k and image b, the class tokens are L2-normalised, S = Z Z^T
    (C x C cosine, temperature 1), and for each class j the cross-entropy of
    ``softmax_i S[i, j]`` against i = j is weighted by ``labels[b, j]``,
    summed over j, averaged over blocks, divided by ``sum_j labels + 1e-8``
    and averaged over the batch.

    Args:
        tokens (Tensor): class tokens of the blocks used, (K, B, C, D).
        labels (Tensor): (B, C) multi-hot.

    Returns:
        Tensor: scalar.
    """
    K, B, C, _ = tokens.shape
    z = F.normalize(tokens, dim=-1)
    sim = z @ z.transpose(-1, -2)  # (K, B, C, C)
    target = torch.arange(C, device=tokens.device).expand(B, K, C)
    # class axis i first: (B, C_i, C_j, K) vs targets (B, C_j, K)
    ce = F.cross_entropy(
        sim.permute(1, 2, 3, 0), target.transpose(1, 2), reduction='none')
    per_image = (ce * labels[..., None]).sum(dim=1).mean(dim=-1)  # (B, )
    return (per_image / (labels.sum(dim=-1) + 1e-8)).mean()


@MODELS.register_module()
class MCTHead(BaseModule):
    """MCTformer V1 / V2 / MCTformer+ CAM head (on MCT encoder features).

    Args:
        num_classes (int): foreground classes C (= class tokens).
        in_channels (int): token dims D.
        version (str): 'v1', 'v2' or 'plus'. Default: 'v2'.
        cam_mode (str, optional): 'fused', 'patchcam' or 'mct' (the
            original ``attention_type``); V1 has only 'mct'. None: 'mct' for
            V1, 'fused' otherwise. Default: None.
        cam_layers (int, optional): K, the last K layers whose class-to-patch
            attention forms the CAM (``--layer-index``; more than the depth
            means all; V1 uses at most the last 12, as the original keeps
            only those maps). None: 3 for V1/V2, 12 for MCTformer+.
            Default: None.
        loss_weights (dict, optional): weights of the loss terms 'cls',
            'patch' (V2, +) and 'cct' (+). Default: all 1.0 (the original).
        decay_parameter (float): MCTformer+ ranking-pool decay.
            Default: 0.996.
        num_cct (int): MCTformer+ CCT loss over the class tokens of the last
            ``num_cct`` blocks. Default: 12.
        init_cfg (dict, optional): mmengine init config. Default: None.
    """

    # reads attention maps only through their mean over heads
    attn_head_mean_only = True

    def __init__(self,
                 num_classes: int,
                 in_channels: int,
                 version: str = 'v2',
                 cam_mode: Optional[str] = None,
                 cam_layers: Optional[int] = None,
                 loss_weights: Optional[Dict[str, float]] = None,
                 decay_parameter: float = 0.996,
                 num_cct: int = 12,
                 init_cfg: Optional[dict] = None):
        super().__init__(init_cfg=init_cfg)
        if version not in _VERSIONS:
            raise ValueError(
                f'MCTHead: version must be one of {_VERSIONS}, got '
                f'{version!r}')
        if cam_mode is None:
            cam_mode = 'mct' if version == 'v1' else 'fused'
        allowed = ('mct', ) if version == 'v1' else _CAM_MODES
        if cam_mode not in allowed:
            raise ValueError(
                f'MCTHead: cam_mode must be one of {allowed} for version '
                f'{version!r}, got {cam_mode!r}'
                + (' (V1 has no PatchCAM branch)' if version == 'v1' else ''))
        if cam_layers is None:
            cam_layers = _DEFAULT_CAM_LAYERS[version]
        if not isinstance(cam_layers, int) or cam_layers < 1:
            raise ValueError(f'MCTHead: cam_layers must be an int >= 1, got '
                             f'{cam_layers!r}')
        weights = {k: 1.0 for k in _LOSS_TERMS[version]}
        unknown = sorted(set(loss_weights or {}) - set(weights))
        if unknown:
            raise ValueError(
                f'MCTHead: unknown loss_weights keys {unknown} for version '
                f'{version!r}; allowed: {sorted(weights)}')
        weights.update(loss_weights or {})
        if not 0. < decay_parameter <= 1.:
            raise ValueError('MCTHead: decay_parameter must be in (0, 1], '
                             f'got {decay_parameter!r}')
        if not isinstance(num_cct, int) or num_cct < 1:
            raise ValueError(f'MCTHead: num_cct must be an int >= 1, got '
                             f'{num_cct!r}')
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.version = version
        self.cam_mode = cam_mode
        self.cam_layers = cam_layers
        self.loss_weights = weights
        self.decay_parameter = decay_parameter
        self.num_cct = num_cct
        if version != 'v1':
            # PatchCAM branch; PyTorch's default Conv2d init, as the original
            self.patch_cam = nn.Conv2d(
                in_channels, num_classes, kernel_size=3, stride=1, padding=1)

    # ------------------------------------------------------------------
    def _patch_maps(self, feats: dict) -> Tensor:
        """3x3 conv on the patch-token grid, (B, C, h, w)."""
        tokens = feats['patch_tokens']  # (B, P, D)
        h, w = feats['hw']
        B, P, D = tokens.shape
        grid = tokens.transpose(1, 2).reshape(B, D, h, w)
        return self.patch_cam(grid)

    def _patch_logits(self, maps: Tensor) -> Tensor:
        if self.version == 'plus':
            return ranking_weighted_pool(maps, self.decay_parameter)
        return F.adaptive_avg_pool2d(maps, 1).flatten(1)

    def train_logits(self, feats: dict) -> Dict[str, Tensor]:
        """Classification logits.

        Args:
            feats (dict): encoder features (``cls_tokens`` (B, C, D),
                ``patch_tokens`` (B, P, D), ``hw``).

        Returns:
            dict[str, Tensor]: ``cls_logits`` (B, C) and, for V2 / +,
            ``patch_logits`` (B, C).
        """
        out = dict(cls_logits=feats['cls_tokens'].mean(dim=-1))
        if self.version != 'v1':
            out['patch_logits'] = self._patch_logits(self._patch_maps(feats))
        return out

    def loss(self, feats: dict, img_labels: Tensor) -> Dict[str, Tensor]:
        """Multi-label losses from image-level labels.

        Args:
            feats (dict): encoder features; MCTformer+ also needs
                ``cls_tokens_per_block`` (L, B, C, D).
            img_labels (Tensor): (B, C) multi-hot float.

        Returns:
            dict[str, Tensor]: ``loss_cls`` [, ``loss_patch``] [,
            ``loss_cct``] (weighted).
        """
        labels = img_labels.float()
        logits = self.train_logits(feats)
        w = self.loss_weights
        losses = dict(
            loss_cls=w['cls'] *
            multilabel_soft_margin(logits['cls_logits'], labels))
        if self.version == 'plus':
            if 'cls_tokens_per_block' not in feats:
                raise KeyError('MCTHead(version=plus) needs '
                               "feats['cls_tokens_per_block'] (use the "
                               'MCTformerPlus backbone)')
            tokens = feats['cls_tokens_per_block'][-self.num_cct:]
            losses['loss_cct'] = w['cct'] * contrastive_class_token_loss(
                tokens, labels)
        if 'patch_logits' in logits:
            losses['loss_patch'] = w['patch'] * multilabel_soft_margin(
                logits['patch_logits'], labels)
        return losses

    # ------------------------------------------------------------------
    def cam_attn_layers(self, num_layers: int) -> List[int]:
        """Layers whose attention maps :meth:`predict_cams` needs."""
        if self.cam_mode == 'patchcam':
            return []
        k = min(self.cam_layers, num_layers)
        if self.version == 'v1':
            # the original V1 keeps the maps of its last 12 blocks only
            # (forward_features(n=12)); equal to the rule above up to depth 12
            k = min(k, _V1_KEPT_LAYERS)
        return list(range(num_layers - k, num_layers))

    def _class_to_patch(self, feats: dict) -> Tensor:
        """mtatt: class-to-patch attention over the last K layers,
        (B, C, h, w); summed (V1/V2) or meaned (MCTformer+)."""
        attn = feats['attn']
        num_layers = feats.get('num_layers')
        if num_layers is not None:
            layers = self.cam_attn_layers(num_layers)
        else:  # the head's layers are the last K of those captured
            layers = sorted(attn)[-self.cam_layers:]
        missing = [i for i in layers if i not in attn]
        if missing or not layers:
            raise KeyError(
                f'MCTHead needs the attention maps of layers {layers}, but '
                f'only {sorted(attn)} were captured: pass '
                'capture_layers=cam_head.cam_attn_layers(num_layers) to the '
                'backbone')
        C = self.num_classes
        rows = torch.stack([attn[i].mean(dim=1)[:, :C, C:] for i in layers])
        mtatt = rows.mean(dim=0) if self.version == 'plus' else rows.sum(0)
        h, w = feats['hw']
        return mtatt.reshape(mtatt.shape[0], C, h, w)

    def predict_cams(self, feats: dict) -> Dict[str, Tensor]:
        """Raw CAMs as the original ``forward(x, return_att=True)``.

        Args:
            feats (dict): encoder features with ``attn`` for
                :meth:`cam_attn_layers`.

        Returns:
            dict: ``cams`` (B, C, h, w) and ``logits`` (B, C): the class-token
            logits (V1/V2) or (cls + patch) / 2 (MCTformer+).
        """
        cls_logits = feats['cls_tokens'].mean(dim=-1)
        if self.version == 'v1':
            return dict(cams=self._class_to_patch(feats), logits=cls_logits)
        maps = self._patch_maps(feats)
        patch_cam = F.relu(maps.detach())
        if self.cam_mode == 'patchcam':
            cams = patch_cam
        elif self.cam_mode == 'mct':
            cams = self._class_to_patch(feats)
        else:
            cams = self._class_to_patch(feats) * patch_cam
            if self.version == 'plus':
                cams = cams.sqrt()
        if self.version == 'plus':
            cls_logits = (cls_logits + self._patch_logits(maps)) / 2
        return dict(cams=cams, logits=cls_logits)
