"""Stage 1 of WSSS: a classifier trained on image-level labels whose class
activation maps (CAMs) become segmentation masks."""
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.structures import PixelData
from torch import Tensor

from mmseg.models.segmentors import BaseSegmentor
from mmseg.registry import MODELS
from mmseg.utils import ConfigType, OptConfigType, OptMultiConfig, SampleList
from ..utils.attention import keep_head_mean_attention

_LABEL_SOURCES = ('gt', 'pred', 'none')


def _padding(img_meta: dict) -> List[int]:
    """(left, right, top, bottom) test-time padding of one sample."""
    pad = img_meta.get('img_padding_size', img_meta.get('padding_size'))
    return [int(p) for p in pad] if pad is not None else [0, 0, 0, 0]


@MODELS.register_module()
class CAMSegmentor(BaseSegmentor):
    """Weakly-supervised segmentor: image-level labels in, CAM masks out.

    Call graph (cf. mmseg's ``EncoderDecoder``)::

        loss(): extract_feat(capture=loss layers) -> cam_head.loss(feats, labels)
        predict(): inference() -> raw_cams() -> postprocess_result()
            raw_cams(): extract_feat(capture=CAM + refiner layers)
                        -> cam_head.predict_cams() -> refiners -> upsample
            postprocess_result(): crop padding, un-flip, resize to the
                        original size -> cams_to_prediction()
            cams_to_prediction(): keep the image's classes -> per-class
                        min-max normalisation -> background threshold

    The loss only ever sees the image-level label ``gt_img_label`` (B, C)
    packed by :class:`PackCAMInputs`; ``gt_sem_seg`` is used only by metrics.

    Predictions follow mmseg's format so ``IoUMetric`` reports CAM mIoU:
    ``seg_logits`` is (C + 1, H, W) when ``background_index`` is set: the
    background channel holds the constant threshold ``bg_thresh`` and channel
    ``k + 1`` the normalised CAM of class ``k`` (0 for classes the image may
    not have); ``pred_sem_seg`` is its argmax. With ``background_index=None``
    there is no background channel (C, H, W).

    Args:
        backbone (ConfigType): token encoder; ``forward(x, capture_layers)``
            returns a dict of features (see ``MCTformerV2``).
        cam_head (ConfigType): CAM head with ``loss``, ``predict_cams`` and
            ``cam_attn_layers`` (e.g. ``MCTHead``).
        refiners (list[ConfigType], optional): CAM refiners applied in order,
            each with ``attn_layers(num_layers)`` and ``forward(cams, feats)``.
        background_index (int | None): segmentation index of background.
            Default: 0.
        data_preprocessor, train_cfg, init_cfg: as in mmseg.
        test_cfg (dict, optional): ``bg_thresh`` (float, default 0.4),
            ``label_source`` ('gt': the image's ground-truth class label, as
            pseudo-label generation does; 'pred': classes whose logit > 0;
            'none': all classes), ``keep_raw_cams`` (bool, default False:
            store the un-normalised CAMs as ``cam_raw`` in each sample, used
            by the TTA model and for saving CAMs).
    """

    def __init__(self,
                 backbone: ConfigType,
                 cam_head: ConfigType,
                 refiners: Optional[Sequence[ConfigType]] = None,
                 background_index: Optional[int] = 0,
                 data_preprocessor: OptConfigType = None,
                 train_cfg: OptConfigType = None,
                 test_cfg: OptConfigType = None,
                 init_cfg: OptMultiConfig = None):
        super().__init__(
            data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        self.backbone = MODELS.build(backbone)
        self.cam_head = MODELS.build(cam_head)
        self.refiners = nn.ModuleList(
            [MODELS.build(cfg) for cfg in (refiners or [])])
        self.background_index = background_index
        self.num_classes = self.cam_head.num_classes
        self.out_channels = self.num_classes + (
            0 if background_index is None else 1)
        self.align_corners = False
        self.train_cfg = train_cfg or {}
        self.test_cfg = dict(
            bg_thresh=0.4, label_source='gt', keep_raw_cams=False)
        self.test_cfg.update(test_cfg or {})
        if self.test_cfg['label_source'] not in _LABEL_SOURCES:
            raise ValueError(
                f'CAMSegmentor: test_cfg.label_source must be one of '
                f'{_LABEL_SOURCES}, got {self.test_cfg["label_source"]!r}')
        if background_index not in (None, 0):
            raise ValueError('CAMSegmentor: background_index must be 0 or '
                             f'None, got {background_index!r}')

    # ------------------------------------------------------------------
    # features
    @property
    def _num_layers(self) -> int:
        return getattr(self.backbone, 'num_layers', 0)

    def _cam_capture_layers(self) -> List[int]:
        layers = set(self.cam_head.cam_attn_layers(self._num_layers))
        for refiner in self.refiners:
            layers.update(refiner.attn_layers(self._num_layers))
        return sorted(layers)

    def _cam_attn_head_mean_only(self) -> bool:
        """Whether every CAM consumer of the attention maps (head,
        refiners) only reads their mean over heads: then (B, 1, N, N) maps
        are kept, the same values with num_heads times less memory."""
        return all(
            getattr(m, 'attn_head_mean_only', False)
            for m in [self.cam_head, *self.refiners])

    def _loss_capture_layers(self) -> Optional[List[int]]:
        get_layers = getattr(self.cam_head, 'loss_attn_layers', None)
        layers = get_layers(self._num_layers) if get_layers else None
        return sorted(layers) if layers else None

    def extract_feat(self, inputs: Tensor,
                     capture_layers: Optional[Sequence[int]] = None) -> dict:
        """Backbone features; attention maps only for ``capture_layers``."""
        return self.backbone(inputs, capture_layers=capture_layers)

    # ------------------------------------------------------------------
    # training
    @staticmethod
    def _stack_img_labels(data_samples: SampleList) -> Tensor:
        if not data_samples or 'gt_img_label' not in data_samples[0]:
            raise KeyError(
                'CAMSegmentor needs image-level labels: add '
                "dict(type='AddImageLevelLabel', ...) or "
                "dict(type='LoadImageLevelLabelFromFile', ...) and "
                "dict(type='PackCAMInputs') to the pipeline.")
        return torch.stack([s.gt_img_label for s in data_samples]).float()

    def loss(self, inputs: Tensor, data_samples: SampleList) -> dict:
        """Multi-label classification losses from image-level labels only.

        Args:
            inputs (Tensor): images, (B, 3, H, W).
            data_samples (list[SegDataSample]): with ``gt_img_label`` (C,).
        """
        labels = self._stack_img_labels(data_samples)
        if labels.shape[1] != self.num_classes:
            raise ValueError(
                f'image-level labels have {labels.shape[1]} classes but the '
                f'CAM head has num_classes={self.num_classes}; make them '
                'agree (config num_classes vs dataset / label file).')
        feats = self.extract_feat(inputs, self._loss_capture_layers())
        return self.cam_head.loss(feats, labels)

    def _forward(self, inputs: Tensor,
                 data_samples: OptConfigType = None) -> Dict[str, Tensor]:
        """Training logits, dict of named (B, C) tensors."""
        return self.cam_head.train_logits(self.extract_feat(inputs))

    # ------------------------------------------------------------------
    # inference
    def raw_cams(self, inputs: Tensor):
        """Raw (refined) CAMs at the input size and the CAM-mode logits.

        Returns:
            tuple: cams (B, C, H, W) un-normalised, logits (B, C).
        """
        with keep_head_mean_attention(self.backbone,
                                      self._cam_attn_head_mean_only()):
            feats = self.extract_feat(inputs, self._cam_capture_layers())
        out = self.cam_head.predict_cams(feats)
        cams = out['cams']
        for refiner in self.refiners:
            cams = refiner(cams, feats)
        cams = F.interpolate(
            cams, size=inputs.shape[-2:], mode='bilinear',
            align_corners=False)
        return cams, out['logits']

    def encode_decode(self, inputs: Tensor,
                      batch_img_metas: List[dict]) -> Tensor:
        """Raw CAMs at the input size, (B, C, H, W)."""
        return self.raw_cams(inputs)[0]

    def predict(self, inputs: Tensor,
                data_samples: OptConfigType = None) -> SampleList:
        """CAM masks for a batch of images.

        Test-time padding (the data preprocessor's ``test_cfg`` pads images
        of different sizes to one batch) is removed before the model runs:
        images are grouped by their un-padded size and each group runs on
        its un-padded pixels, so a batch gives the CAMs of one-by-one runs,
        as the original per-image CAM code does.

        Args:
            inputs (Tensor): images, (B, 3, H, W), padded to one size.
            data_samples (list[SegDataSample], optional): metainfo (with the
                padding) and, for ``label_source='gt'``, ``gt_img_label``.

        Returns:
            list[SegDataSample]: with ``seg_logits``, ``pred_sem_seg`` (and
            ``cam_raw``, ``cam_logits`` if ``keep_raw_cams``).
        """
        self._check_image_sizes(inputs, data_samples)
        pads = [_padding(s.metainfo) for s in data_samples or []]
        if not any(any(p) for p in pads):
            cams, logits = self.raw_cams(inputs)
            return self.postprocess_result(cams, data_samples, logits)
        H, W = inputs.shape[-2:]
        groups: Dict[tuple, List[int]] = {}
        for i, pad in enumerate(pads):
            groups.setdefault(tuple(pad), []).append(i)
        cams = logits = None
        for (left, right, top, bottom), idx in groups.items():
            sub = inputs[idx, :, top:H - bottom, left:W - right]
            sub_cams, sub_logits = self.raw_cams(sub)
            if cams is None:
                cams = sub_cams.new_zeros(
                    (len(inputs), sub_cams.shape[1], H, W))
                logits = sub_logits.new_zeros(
                    (len(inputs), ) + sub_logits.shape[1:])
            # back into the padded layout that postprocess_result crops
            cams[idx, :, top:H - bottom, left:W - right] = sub_cams
            logits[idx] = sub_logits
        return self.postprocess_result(cams, data_samples, logits)

    def _check_image_sizes(self, inputs: Tensor,
                           data_samples: OptConfigType) -> None:
        """Name the image when one is smaller than a patch (the backbone
        alone cannot say which file it was)."""
        patch = getattr(self.backbone, 'patch_size', None)
        if not isinstance(patch, int) or not data_samples:
            return
        H, W = inputs.shape[-2:]
        for sample in data_samples:
            left, right, top, bottom = _padding(sample.metainfo)
            h, w = H - top - bottom, W - left - right
            if h < patch or w < patch:
                raise ValueError(
                    f'image {sample.metainfo.get("img_path", "?")} is {h}x{w} '
                    f'pixels at test time, smaller than one {patch}x{patch} '
                    f'patch of {type(self.backbone).__name__}: resize it in '
                    "the test pipeline (dict(type='Resize', scale=..., "
                    'keep_ratio=True)) or remove it from the dataset.')

    def _allowed_classes(self, data_sample, logits: Optional[Tensor],
                         device) -> Tensor:
        """(C,) 0/1 mask of the classes this image may contain."""
        source = self.test_cfg['label_source']
        if source == 'gt':
            if data_sample is None or 'gt_img_label' not in data_sample:
                raise KeyError(
                    "test_cfg.label_source='gt' needs gt_img_label in the "
                    'test pipeline (AddImageLevelLabel or '
                    "LoadImageLevelLabelFromFile + PackCAMInputs); use "
                    "label_source='pred' for images without labels.")
            label = data_sample.gt_img_label
            if label.numel() != self.num_classes:
                raise ValueError(
                    f'image {data_sample.metainfo.get("img_path", "?")}: its '
                    f'image-level label has {label.numel()} classes but the '
                    f'CAM head has num_classes={self.num_classes}; make the '
                    'config num_classes, the dataset classes and the label '
                    'file agree.')
            return label.to(device).float()
        if source == 'pred':
            return (logits > 0).float().to(device)
        return torch.ones(self.num_classes, device=device)

    def cams_to_prediction(self, cams: Tensor, allowed: Tensor):
        """Raw CAMs of one image -> (seg_logits, pred_sem_seg).

        Args:
            cams (Tensor): raw CAMs at the original size, (C, H, W).
            allowed (Tensor): (C,) 0/1 classes kept.

        Returns:
            tuple: seg_logits (C [+1], H, W) and pred (1, H, W) long.
        """
        flat = cams.flatten(1)
        lo = flat.min(dim=1).values[:, None, None]
        hi = flat.max(dim=1).values[:, None, None]
        norm = (cams - lo) / (hi - lo + 1e-8)
        norm = norm * allowed[:, None, None].to(norm)
        if self.background_index is not None:
            bg = norm.new_full((1, ) + norm.shape[1:],
                               float(self.test_cfg['bg_thresh']))
            norm = torch.cat([bg, norm], dim=0)
        return norm, norm.argmax(dim=0, keepdim=True)

    def undo_geometry(self, cams: Tensor, img_meta: dict) -> Tensor:
        """Crop padding, un-flip and resize one sample's CAMs, (C, H, W)."""
        _, H, W = cams.shape
        left, right, top, bottom = _padding(img_meta)
        cams = cams[:, top:H - bottom, left:W - right]
        if img_meta.get('flip', False):
            dim = 2 if img_meta.get('flip_direction',
                                    'horizontal') == 'horizontal' else 1
            cams = cams.flip(dims=(dim, ))
        ori = img_meta.get('ori_shape', cams.shape[-2:])[:2]
        if tuple(cams.shape[-2:]) != tuple(ori):
            cams = F.interpolate(
                cams[None], size=ori, mode='bilinear',
                align_corners=False)[0]
        return cams

    def postprocess_result(self, seg_logits: Tensor,
                           data_samples: OptConfigType = None,
                           logits: Optional[Tensor] = None) -> SampleList:
        """Turn raw CAMs (B, C, H, W) into mmseg SegDataSamples."""
        from mmseg.structures import SegDataSample
        if data_samples is None:
            data_samples = [SegDataSample() for _ in range(len(seg_logits))]
        for i, sample in enumerate(data_samples):
            cams = self.undo_geometry(seg_logits[i], sample.metainfo)
            allowed = self._allowed_classes(
                sample, None if logits is None else logits[i], cams.device)
            norm, pred = self.cams_to_prediction(cams, allowed)
            sample.set_data({
                'seg_logits': PixelData(data=norm),
                'pred_sem_seg': PixelData(data=pred)
            })
            if self.test_cfg.get('keep_raw_cams', False):
                sample.set_data({'cam_raw': PixelData(data=cams)})
                if logits is not None:
                    sample.set_field(logits[i], 'cam_logits')
        return data_samples
