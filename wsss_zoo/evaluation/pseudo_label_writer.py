"""Write pseudo masks (and optionally raw CAMs) from a test run.

Three pieces make generation shardable and resumable
(``tools/make_pseudo_labels.py`` wires them up):

- :class:`PseudoLabelSampler` gives each rank a disjoint share of the images
  whose outputs are missing (no padding, no repeats), so every image is
  written exactly once and a rerun only does what is left;
- :class:`PseudoLabelWriter` writes each output atomically (temporary name
  in the same folder, then rename);
- :func:`evaluate_pseudo_labels` scores the mask files on disk against the
  dataset's masks (so resumed runs are scored completely).
"""
import glob
import os
import os.path as osp
from typing import Iterator, List, Optional, Sequence, Union

import numpy as np
import torch
from mmengine.dist import (all_reduce, broadcast_object_list, get_dist_info,
                           is_main_process)
from mmengine.evaluator import BaseMetric
from mmengine.logging import MMLogger, print_log
from PIL import Image
from torch.utils.data import Sampler

from mmseg.registry import DATA_SAMPLERS, METRICS
from wsss_zoo.compat import atomic_write  # noqa: F401  (re-exported)
from .dense_crf import _import_densecrf, crf_refine_mask, crf_settings


def image_id(img_path: str) -> str:
    """``'.../JPEGImages/2007_000032.jpg'`` -> ``'2007_000032'``."""
    return osp.splitext(osp.basename(img_path))[0]


def output_paths(out_dir: str, img_path: str,
                 save_cams: bool = False) -> List[str]:
    """Files generated for one image: ``<id>.png`` [+ ``cams/<id>.npz``]."""
    name = image_id(img_path)
    paths = [osp.join(out_dir, name + '.png')]
    if save_cams:
        paths.append(osp.join(out_dir, 'cams', name + '.npz'))
    return paths


def remove_stale_temporaries(out_dir: str) -> int:
    """Delete ``.tmp_*`` files that a killed run left in ``out_dir``.

    Only call it when no writer is running (e.g. after a barrier).
    """
    stale = glob.glob(osp.join(out_dir, '.tmp_*')) + glob.glob(
        osp.join(out_dir, 'cams', '.tmp_*'))
    for path in stale:
        try:
            os.remove(path)
        except FileNotFoundError:
            pass
    return len(stale)


@DATA_SAMPLERS.register_module()
class PseudoLabelSampler(Sampler):
    """Shard the images still to be done across ranks, each exactly once.

    Unlike ``DefaultSampler`` (which pads the index list so that every rank
    gets as many samples, writing some images twice) this sampler gives rank
    ``r`` of ``W`` the pending indices ``pending[r::W]``: disjoint, no
    repeats, their union is the pending set. An image is pending unless all
    of its outputs (:func:`output_paths`) exist; with ``overwrite=True``
    every image is pending. Rank 0 decides what is pending and broadcasts
    it (the ranks start at different times and must not see each other's
    new files). The order is the dataset order.

    Args:
        dataset: the pseudo-label dataset (``get_data_info(i)['img_path']``).
        out_dir (str): output folder of :class:`PseudoLabelWriter`.
        save_cams (bool): whether the CAM ``.npz`` files are outputs too.
            Default: False.
        overwrite (bool): redo images whose outputs exist. Default: False.
        seed: ignored (the order is fixed); accepted because the runner
            passes it to every sampler.

    Raises:
        ValueError: two images of the dataset share one id (file name
            without extension): their outputs would overwrite each other.
    """

    def __init__(self,
                 dataset,
                 out_dir: str,
                 save_cams: bool = False,
                 overwrite: bool = False,
                 seed: Optional[int] = None):
        self.dataset = dataset
        self.out_dir = out_dir
        rank, world_size = get_dist_info()
        paths = [dataset.get_data_info(i)['img_path']
                 for i in range(len(dataset))]
        seen, dups = {}, []
        for path in paths:
            name = image_id(path)
            if name in seen:
                dups.append(f'{seen[name]} and {path}')
            seen[name] = path
        if dups:
            raise ValueError(
                f'{len(dups)} image ids occur twice in the pseudo-label '
                f'dataset, e.g. {dups[:3]}; their masks ({out_dir}/<id>.png) '
                'would overwrite each other. Make the ids unique (one split '
                'file without repeated lines, one image folder).')
        pending = None
        if rank == 0:
            pending = [
                i for i, path in enumerate(paths) if overwrite or not all(
                    osp.isfile(p)
                    for p in output_paths(out_dir, path, save_cams))
            ]
        if world_size > 1:
            # one view of what is done: a rank that looked later would see
            # files the other ranks are already writing and shard otherwise
            box = [pending]
            broadcast_object_list(box, src=0)
            pending = box[0]
        self.num_total = len(paths)
        self.num_pending = len(pending)
        self.indices = pending[rank::world_size]
        if is_main_process():
            print_log(
                f'pseudo labels: {len(paths) - len(pending)} of {len(paths)} '
                f'images already complete in {osp.abspath(out_dir)}'
                f'{" (overwritten)" if overwrite else " (kept)"}; '
                f'{len(pending)} to do on {world_size} process(es)',
                logger='current')

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)

    def set_epoch(self, epoch: int) -> None:
        """No shuffling: nothing to do (kept for the runner's hooks)."""


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
    config; ``tools/make_pseudo_labels.py`` sets it up (together with
    :class:`PseudoLabelSampler`). Files are named after the image
    (``<out_dir>/<image id>.png``) and written atomically: a killed run
    leaves complete files and at most some ``.tmp_*`` files, which the next
    complete run removes. With ``overwrite=False`` an existing file is kept.

    ``evaluate`` sums the per-rank counts (it does not gather per-image
    results, so ranks may hold different numbers of images) and returns
    ``pseudo_labels_written`` and ``pseudo_labels_kept`` (= dataset size -
    written).

    Args:
        out_dir (str): output folder of the masks.
        save_cams (bool): also write ``<out_dir>/cams/<id>.npz`` with
            ``cams`` (K, H, W) float32 normalised CAMs of the kept classes,
            ``raw`` (K, H, W) their raw sums when available and ``classes``
            (K,) CAM class indices. Default: False.
        overwrite (bool): rewrite existing files. Default: True.
        background_index (int | None): as in the segmentor; channel 0 of
            ``seg_logits`` is the background threshold when 0. Default: 0.
        crf (str | dict, optional): refine each mask with a dense CRF on
            its image before writing (WeakTr's label CRF, see
            :mod:`wsss_zoo.evaluation.dense_crf`): a preset ('voc', 'coco')
            or settings. The CRF's labels are the background and the
            image's classes (``gt_img_label`` when the sample has it, else
            the classes in the mask). Needs ``pydensecrf2``
            (``pip install -e ".[crf]"``). Default: None (no CRF).

    Masks of ``reduce_zero_label`` datasets get +1 (ADE-style files).
    """

    default_prefix = 'pseudo_labels'  # metric names already say it

    def __init__(self,
                 out_dir: str,
                 save_cams: bool = False,
                 overwrite: bool = True,
                 background_index: Optional[int] = 0,
                 crf: Optional[Union[str, dict]] = None,
                 collect_device: str = 'cpu',
                 prefix: Optional[str] = None,
                 **kwargs):
        super().__init__(collect_device=collect_device, prefix=prefix)
        self.out_dir = out_dir
        self.save_cams = save_cams
        self.overwrite = overwrite
        self.background_index = background_index
        self.crf = None
        if crf:
            if background_index != 0:
                raise ValueError(
                    'PseudoLabelWriter: crf needs masks with a background '
                    f'class 0 (background_index=0), got {background_index}')
            self.crf = crf_settings(crf)  # checks the settings
            _import_densecrf()  # fail now, not after the first batch
        os.makedirs(out_dir, exist_ok=True)

    def _write_mask(self, path: str, mask: np.ndarray) -> None:
        # an 'L' image of the class indices; with a palette it becomes a
        # 'P' image of the same indices. (Pillow 13 saves a palette-less
        # 'P' image as 1-bit: every class > 0 became 1.)
        image = Image.fromarray(mask.astype(np.uint8))
        palette = _palette_array((self.dataset_meta or {}).get('palette'))
        if palette is not None:
            image.putpalette(palette)
        atomic_write(path, lambda tmp: image.save(tmp, format='PNG'))

    def process(self, data_batch, data_samples: Sequence[dict]) -> None:
        for sample in data_samples:
            mask_path = output_paths(self.out_dir, sample['img_path'])[0]
            written = 0
            if self.save_cams:
                written = self._write_cams(image_id(sample['img_path']),
                                           sample)
            if self.overwrite or not osp.exists(mask_path):
                mask = sample['pred_sem_seg']['data'][0].cpu().numpy()
                if self.crf is not None:
                    mask = self._refine(mask, sample)
                if sample.get('reduce_zero_label', False):
                    mask = mask + 1
                self._write_mask(mask_path, mask)
                written = 1
            self.results.append(written)

    def _refine(self, mask: np.ndarray, sample: dict) -> np.ndarray:
        """Dense CRF of one (H, W) mask on its image (read from
        ``img_path``, RGB, the mask's size)."""
        with Image.open(sample['img_path']) as img:
            image = np.asarray(img.convert('RGB'))
        if image.shape[:2] != mask.shape:
            raise ValueError(
                f'CRF: image {sample["img_path"]} is {image.shape[:2]} but '
                f'its mask {mask.shape}; masks are written at the original '
                'image size')
        classes = None
        if 'gt_img_label' in sample:
            label = sample['gt_img_label']
            label = label.cpu().numpy() if hasattr(label, 'cpu') else \
                np.asarray(label)
            classes = (np.flatnonzero(label > 0) + 1).tolist()
        return crf_refine_mask(image, mask, classes, background=0,
                               crf=self.crf)

    def _write_cams(self, name: str, sample: dict) -> int:
        path = osp.join(self.out_dir, 'cams', name + '.npz')
        if not self.overwrite and osp.exists(path):
            return 0
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
        return 1

    def compute_metrics(self, results: list) -> dict:
        return dict(pseudo_labels_written=float(sum(results)))

    def evaluate(self, size: int) -> dict:
        """Counts summed over ranks; removes stale temporary files.

        Args:
            size (int): number of images of the dataset.
        """
        written = torch.tensor([float(sum(self.results))],
                               dtype=torch.float64)
        _, world_size = get_dist_info()
        if world_size > 1:
            all_reduce(written)  # also waits until every rank is done
        written = float(written.item())
        self.results.clear()
        if is_main_process():
            stale = remove_stale_temporaries(self.out_dir)
            MMLogger.get_current_instance().info(
                f'pseudo labels: {written:.0f} written, '
                f'{max(size - written, 0):.0f} kept, in '
                f'{osp.abspath(self.out_dir)}' +
                (f' ({stale} stale temporary files of an interrupted run '
                 'removed)' if stale else ''))
        return dict(pseudo_labels_written=written,
                    pseudo_labels_kept=float(max(size - written, 0)))


def _read_index_png(path: str) -> np.ndarray:
    with Image.open(path) as image:
        return np.array(image)


def evaluate_pseudo_labels(out_dir: str,
                           dataset,
                           ignore_index: int = 255) -> dict:
    """mIoU of the mask files in ``out_dir`` against the dataset's masks.

    Reads ``<out_dir>/<id>.png`` for every image of ``dataset`` (they must
    all exist) and the ground truth ``seg_map_path``; ``reduce_zero_label``
    datasets are compared in the reduced labels (file value 0 ignored), as
    the writer stores ``mask + 1`` for them.

    Args:
        out_dir (str): folder of the pseudo masks.
        dataset: mmseg dataset with ``metainfo['classes']`` and
            ``get_data_info(i)`` giving ``img_path``, ``seg_map_path``.
        ignore_index (int): ignored ground-truth value. Default: 255.

    Returns:
        dict: ``mIoU`` and ``aAcc`` (percent, as mmseg's ``IoUMetric``) and
        ``IoU.<class>`` per class (NaN classes are absent from both).
    """
    classes = list(dataset.metainfo['classes'])
    num_classes = len(classes)
    hist = np.zeros((num_classes, num_classes), dtype=np.int64)
    missing = []
    for i in range(len(dataset)):
        info = dataset.get_data_info(i)
        pred_path = output_paths(out_dir, info['img_path'])[0]
        if not osp.isfile(pred_path):
            missing.append(pred_path)
            continue
        pred = _read_index_png(pred_path).astype(np.int64)
        gt = _read_index_png(info['seg_map_path']).astype(np.int64)
        if pred.shape != gt.shape:
            raise ValueError(f'{pred_path} has shape {pred.shape} but its '
                             f'mask {info["seg_map_path"]} {gt.shape}')
        if info.get('reduce_zero_label', False):
            gt = np.where((gt == 0) | (gt == ignore_index), ignore_index,
                          gt - 1)
            pred = pred - 1
        valid = (gt != ignore_index) & (gt >= 0) & (gt < num_classes)
        pred = np.clip(pred, 0, num_classes - 1)
        hist += np.bincount(
            gt[valid] * num_classes + pred[valid],
            minlength=num_classes**2).reshape(num_classes, num_classes)
    if missing:
        raise FileNotFoundError(
            f'{len(missing)} pseudo masks are missing, e.g. {missing[:3]}; '
            'run tools/make_pseudo_labels.py (without --overwrite it only '
            'makes the missing ones) before evaluating.')
    inter = np.diag(hist).astype(np.float64)
    union = hist.sum(0) + hist.sum(1) - inter
    with np.errstate(invalid='ignore', divide='ignore'):
        iou = inter / union
    metrics = dict(
        mIoU=round(float(np.nanmean(iou)) * 100, 2) if np.isfinite(
            iou).any() else float('nan'),
        aAcc=round(float(inter.sum() / max(hist.sum(), 1)) * 100, 2))
    for name, value in zip(classes, iou):
        metrics[f'IoU.{name}'] = round(float(value) * 100, 2)
    return metrics
