"""Multi-scale + flip test-time augmentation for CAMs."""
from typing import List

import torch
from mmengine.model import BaseTTAModel
from mmengine.structures import PixelData

from mmseg.registry import MODELS
from mmseg.utils import SampleList


@MODELS.register_module()
class CAMTTAModel(BaseTTAModel):
    """Sum raw CAMs over augmented views, then normalise and threshold.

    This is how WSSS methods aggregate multi-scale + flip CAMs (e.g.
    MCTformer's ``generate_attention_maps_ms``): each view's raw CAM is
    upsampled to the original size, flipped back and summed; only then are
    the image's classes kept, each class min-max normalised and the
    background threshold applied. mmseg's ``SegTTAModel`` softmax-averages
    logits instead, which is not the same for CAMs.

    Use with ``tools/test.py --tta`` and a ``tta_pipeline`` built from
    ``TestTimeAug`` (scales x flips); the wrapped module must be a
    :class:`CAMSegmentor`.
    """

    def __init__(self, module, **kwargs):
        super().__init__(module=module, **kwargs)
        self.module.test_cfg['keep_raw_cams'] = True

    @property
    def out_channels(self):
        return self.module.out_channels

    def merge_preds(self, data_samples_list: List[SampleList]) -> SampleList:
        """Merge each image's augmented predictions into one."""
        merged = []
        for views in data_samples_list:
            cams = torch.stack([v.cam_raw.data for v in views]).sum(0)
            logits = None
            if 'cam_logits' in views[0]:
                logits = torch.stack([v.cam_logits for v in views]).mean(0)
            first = views[0]
            allowed = self.module._allowed_classes(first, logits,
                                                   cams.device)
            norm, pred = self.module.cams_to_prediction(cams, allowed)
            first.set_data({
                'seg_logits': PixelData(data=norm),
                'pred_sem_seg': PixelData(data=pred),
                'cam_raw': PixelData(data=cams),
            })
            if logits is not None:
                first.set_field(logits, 'cam_logits')
            merged.append(first)
        return merged
