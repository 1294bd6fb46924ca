"""Write pseudo masks (and optionally raw CAMs) from a test run."""
import os
import os.path as osp
import tempfile
from typing import Optional, Sequence

import numpy as np
from mmengine.dist import is_main_process
from mmengine.evaluator import BaseMetric
from mmengine.logging import MMLogger
from PIL import Image

from mmseg.registry import METRICS


def atomic_write(path: str, write_fn) -> None:
    """Write ``path`` through a temporary file in the same folder + rename.

    ``write_fn(tmp_path)`` writes the content; a crash never leaves a partial
    file under the final name.
    """
    folder = osp.dirname(path) or '.'
    os.makedirs(folder, exist_ok=True)
    suffix = osp.splitext(path)[1]
    fd, tmp = tempfile.mkstemp(dir=folder, prefix='.tmp_', suffix=suffix)
    os.close(fd)
    try:
        write_fn(tmp)
        os.replace(tmp, path)
    except BaseException:
        if osp.exists(tmp):
            os.remove(tmp)
        raise


def _palette_array(palette, num_values=256) -> Optional[np.ndarray]:
    if not palette:
        return None
    flat = np.zeros((num_values, 3), dtype=np.uint8)
    arr = np.asarray(palette, dtype=np.uint8)[:num_values]
    flat[:len(arr)] = arr
    return flat.reshape(-1)


@METRICS.register_module()
class PseudoLabelWriter(BaseMetric):
    """Save each prediction as a palette PNG (and the raw CAMs as .npz).

    Use it as (one of) the test evaluators of a :class:`CAMSegmentor`
    config; ``tools/make_pseudo_labels.py`` sets it up. Files are named after
    the image (``<out_dir>/<image id>.png``) and written atomically; with
    ``overwrite=False`` an existing complete file is kept, so a killed run can
    be restarted.

    Args:
        out_dir (str): output folder of the masks.
        save_cams (bool): also write ``<out_dir>/cams/<id>.npz`` with
            ``cams`` (K, H, W) float32 normalised CAMs of the kept classes,
            ``raw`` (K, H, W) their raw sums when available and ``classes``
            (K,) CAM class indices. Default: False.
        overwrite (bool): rewrite existing files. Default: True.
        background_index (int | None): as in the segmentor; channel 0 of
            ``seg_logits`` is the background threshold when 0. Default: 0.

    Masks of ``reduce_zero_label`` datasets get +1 (ADE-style files).
    """

    def __init__(self,
                 out_dir: str,
                 save_cams: bool = False,
                 overwrite: bool = True,
                 background_index: Optional[int] = 0,
                 collect_device: str = 'cpu',
                 prefix: Optional[str] = None,
                 **kwargs):
        super().__init__(collect_device=collect_device, prefix=prefix)
        self.out_dir = out_dir
        self.save_cams = save_cams
        self.overwrite = overwrite
        self.background_index = background_index
        os.makedirs(out_dir, exist_ok=True)

    def _write_mask(self, path: str, mask: np.ndarray) -> None:
        image = Image.fromarray(mask.astype(np.uint8), mode='P')
        palette = _palette_array((self.dataset_meta or {}).get('palette'))
        if palette is not None:
            image.putpalette(palette)
        atomic_write(path, lambda tmp: image.save(tmp, format='PNG'))

    def process(self, data_batch, data_samples: Sequence[dict]) -> None:
        for sample in data_samples:
            name = osp.splitext(osp.basename(sample['img_path']))[0]
            mask_path = osp.join(self.out_dir, name + '.png')
            written = 0
            if self.overwrite or not osp.exists(mask_path):
                mask = sample['pred_sem_seg']['data'][0].cpu().numpy()
                if sample.get('reduce_zero_label', False):
                    mask = mask + 1
                self._write_mask(mask_path, mask)
                written = 1
            if self.save_cams:
                self._write_cams(name, sample)
            self.results.append(written)

    def _write_cams(self, name: str, sample: dict) -> None:
        path = osp.join(self.out_dir, 'cams', name + '.npz')
        if not self.overwrite and osp.exists(path):
            return
        norm = sample['seg_logits']['data'].cpu().numpy()
        cams = norm[1:] if self.background_index == 0 else norm
        keep = np.flatnonzero(cams.reshape(len(cams), -1).max(1) > 0)
        arrays = dict(cams=cams[keep].astype(np.float32),
                      classes=keep.astype(np.int64))
        if 'cam_raw' in sample:
            raw = sample['cam_raw']['data'].cpu().numpy()
            arrays['raw'] = raw[keep].astype(np.float32)

        def write(tmp):
            with open(tmp, 'wb') as f:
                np.savez(f, **arrays)

        atomic_write(path, write)

    def compute_metrics(self, results: list) -> dict:
        logger = MMLogger.get_current_instance()
        if is_main_process():
            logger.info(f'pseudo labels: {sum(results)} written, '
                        f'{len(results) - sum(results)} kept, in '
                        f'{osp.abspath(self.out_dir)}')
        return dict(pseudo_labels_written=float(sum(results)))
