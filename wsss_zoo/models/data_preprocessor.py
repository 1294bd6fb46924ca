"""Data preprocessor that can batch test images of different sizes."""
from typing import Any, Dict

from mmseg.models.data_preprocessor import SegDataPreProcessor
from mmseg.registry import MODELS
from mmseg.utils import stack_batch


@MODELS.register_module()
class CAMDataPreProcessor(SegDataPreProcessor):
    """``SegDataPreProcessor`` whose test batches may mix image sizes.

    mmseg's preprocessor asserts that all test images of a batch have one
    size. CAM / pseudo-label generation runs at each image's own size (as
    the original per-image code does), so here test images are padded
    (bottom / right, ``test_cfg=dict(size_divisor=...)`` or ``size``) to one
    batch and the padding is recorded in ``img_padding_size``;
    :class:`CAMSegmentor` removes it again before running the model, so a
    batch gives the CAMs of one-by-one runs. Training is unchanged.

    Args: as ``SegDataPreProcessor``. Without ``test_cfg`` test images are
        padded to the largest image of the batch.
    """

    def forward(self, data: dict, training: bool = False) -> Dict[str, Any]:
        if training:
            return super().forward(data, training=True)
        data = self.cast_data(data)
        inputs = data['inputs']
        data_samples = data.get('data_samples', None)
        if self.channel_conversion and inputs[0].size(0) == 3:
            inputs = [x[[2, 1, 0], ...] for x in inputs]
        inputs = [x.float() for x in inputs]
        if self._enable_normalize:
            inputs = [(x - self.mean) / self.std for x in inputs]
        test_cfg = self.test_cfg or {}
        size = test_cfg.get('size', None)
        size_divisor = test_cfg.get('size_divisor', None)
        if size is None and size_divisor is None:
            size_divisor = 1  # pad to the largest image of the batch
        inputs, padded = stack_batch(
            inputs=inputs, size=size, size_divisor=size_divisor,
            pad_val=self.pad_val, seg_pad_val=self.seg_pad_val)
        if data_samples is not None:
            for sample, pad_info in zip(data_samples, padded):
                sample.set_metainfo({**pad_info})
        return dict(inputs=inputs, data_samples=data_samples)
