"""CAM (seed) mIoU over a sweep of background thresholds.

The protocol of MCTformer's ``evaluation.py --curve`` (and IRN's
``eval_cam.py`` for one threshold): the background plane is a constant t,
the other planes are the per-class normalised CAMs (0 for classes the image
may not have), the prediction is their argmax, and the mIoU is computed over
all segmentation classes, background included.
"""
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from mmengine.evaluator import BaseMetric
from mmengine.logging import MMLogger, print_log
from prettytable import PrettyTable

from mmseg.evaluation import IoUMetric
from mmseg.registry import METRICS


def _field(sample, key: str):
    """``sample[key]['data']`` for dicts (what the evaluator passes) and
    ``sample.key.data`` for ``SegDataSample``s."""
    if isinstance(sample, dict):
        return sample[key]['data']
    return getattr(sample, key).data


@METRICS.register_module()
class CAMThresholdSweepMetric(BaseMetric):
    """mIoU of CAM predictions for many background thresholds at once.

    Expects predictions in the format of ``CAMSegmentor``: ``seg_logits``
    (K, H, W), K segmentation classes, whose channel ``background_index``
    holds a constant (any value: it is replaced) and whose other channels
    hold normalised CAMs. For every threshold t the background channel is
    set to t and the prediction is the argmax (first maximum on ties, as
    ``torch.argmax``), so the result at t equals ``IoUMetric`` on a
    ``CAMSegmentor`` run with ``bg_thresh=t``.

    All thresholds are evaluated in one pass: a pixel whose best foreground
    score is s is foreground exactly for the thresholds below s, so per image
    only two (K, T + 1) histograms are kept (no (T, H, W) tensor and no maps
    in ``results``); sums of integer counts make the result independent of
    batching and of distributed collection.

    Returned metrics: ``mIoU`` (percent, at the best threshold), ``best_thr``,
    ``mFP`` / ``mFN`` (MCTformer's false-positive / false-negative rates,
    ``(P - TP) / union`` and ``(T - TP) / union`` averaged over classes,
    percent), ``fg_precision`` / ``fg_recall`` (pixels of foreground classes
    labelled with the right class, over predicted / true foreground pixels,
    percent), ``uniform_mIoU`` (the reference a CAM must beat: the best
    mIoU of a CAM that is constant over the image for every class the image
    has, i.e. every pixel background, or every pixel its first labelled
    class) and, with ``return_all``, ``mIoU@<t>`` per threshold. The log
    shows mIoU per threshold (best marked) and per-class results at the best.

    Args:
        thresholds (Sequence[float], optional): background thresholds; sorted
            and deduplicated. Default: ``np.arange(start, stop, step)``.
        start (float): first threshold when ``thresholds`` is None.
            Default: 0.0.
        stop (float): end (excluded) when ``thresholds`` is None.
            Default: 1.0.
        step (float): step when ``thresholds`` is None. Default: 0.05.
        background_index (int): channel / class index of the background.
            Default: 0.
        ignore_index (int): ground-truth value that is not evaluated.
            Default: 255.
        greedy (bool): pick the threshold as MCTformer's ``--curve`` does:
            walk up the thresholds and stop at the first one that does not
            improve the mIoU. False picks the global best. Default: False.
        return_all (bool): also return ``mIoU@<t>`` for every t.
            Default: False.
        collect_device (str): 'cpu' or 'gpu'. Default: 'cpu'.
        prefix (str, optional): prefix of the metric names. Default: None.
    """

    def __init__(self,
                 thresholds: Optional[Sequence[float]] = None,
                 start: float = 0.0,
                 stop: float = 1.0,
                 step: float = 0.05,
                 background_index: int = 0,
                 ignore_index: int = 255,
                 greedy: bool = False,
                 return_all: bool = False,
                 collect_device: str = 'cpu',
                 prefix: Optional[str] = None,
                 **kwargs):
        super().__init__(collect_device=collect_device, prefix=prefix)
        if background_index is None:
            raise ValueError(
                'CAMThresholdSweepMetric needs a background class to sweep '
                '(background_index=None given); use IoUMetric for CAMs '
                'without background.')
        if thresholds is None:
            thresholds = np.arange(start, stop, step)
        thresholds = np.unique(np.round(np.asarray(thresholds, np.float64),
                                        6))
        if thresholds.ndim != 1 or thresholds.size == 0:
            raise ValueError('CAMThresholdSweepMetric: thresholds must be a '
                             f'non-empty 1-D sequence, got {thresholds!r}')
        self.thresholds = thresholds
        self.background_index = background_index
        self.ignore_index = ignore_index
        self.greedy = greedy
        self.return_all = return_all

    def process(self, data_batch: dict, data_samples: Sequence) -> None:
        """Keep, per image, histograms of the threshold index at which each
        pixel turns background.

        ``results`` gets one tuple per image: ``pred_hist`` and ``hit_hist``,
        (K, T + 1) int64, and ``area_label`` (K,) int64. For a foreground
        class c, ``pred_hist[c, j]`` counts pixels whose best foreground
        class is c and that are foreground for the first j thresholds
        (``hit_hist``: of those, the ones labelled c). The background row
        counts, by j, all evaluated pixels (``pred_hist``) and the background
        ones (``hit_hist``).
        """
        bg = self.background_index
        for sample in data_samples:
            scores = _field(sample, 'seg_logits')
            K = scores.shape[0]
            if not 0 <= bg < K:
                raise ValueError(
                    f'CAMThresholdSweepMetric: background_index={bg} but '
                    f'seg_logits has {K} channels')
            label = _field(sample, 'gt_sem_seg').to(scores.device)
            if label.shape[-2:] != scores.shape[-2:]:
                raise ValueError(
                    'CAMThresholdSweepMetric: gt_sem_seg has shape '
                    f'{tuple(label.shape)} but seg_logits '
                    f'{tuple(scores.shape)}; predictions must be at the '
                    'size of the ground truth.')
            label = label.reshape(scores.shape[-2:]).long()  # (H, W)
            valid = label != self.ignore_index
            bad = valid & ((label < 0) | (label >= K))
            if bad.any():
                raise ValueError(
                    'CAMThresholdSweepMetric: ground truth has values '
                    f'{label[bad].unique().tolist()} outside [0, {K - 1}] '
                    f'(seg_logits has {K} classes, ignore_index='
                    f'{self.ignore_index})')
            # best foreground class and score per pixel; no copy for bg=0
            fg = scores[1:] if bg == 0 else torch.cat(
                [scores[:bg], scores[bg + 1:]])          # (K - 1, H, W)
            fg_score, fg_arg = fg.max(dim=0)             # (H, W)
            fg_class = fg_arg + (fg_arg >= bg).long()    # skip background
            # foreground for t < score, or t <= score where the class comes
            # before the background channel (argmax keeps the first maximum)
            thr = torch.as_tensor(self.thresholds, device=scores.device,
                                  dtype=scores.dtype)
            num_fg = torch.searchsorted(thr, fg_score, right=False)
            if bg > 0:
                right = torch.searchsorted(thr, fg_score, right=True)
                num_fg = torch.where(fg_class < bg, right, num_fg)
            # one bincount over (row, kind, num_fg): row = fg class or K for
            # ignored pixels; kind 1 = gt is that class, 2 = gt is background
            T1 = len(self.thresholds) + 1
            row = torch.where(valid, fg_class, K)
            kind = (fg_class == label).long() + 2 * (label == bg).long()
            hist = torch.bincount(
                ((row * 3 + kind) * T1 + num_fg).flatten(),
                minlength=(K + 1) * 3 * T1).view(K + 1, 3, T1)[:K]
            pred_hist = hist.sum(dim=1)                  # (K, T1)
            hit_hist = hist[:, 1].clone()
            pred_hist[bg] = pred_hist.sum(dim=0)         # bg row was empty
            hit_hist[bg] = hist[:, 2].sum(dim=0)
            area_label = torch.bincount(
                torch.where(valid, label, K).flatten(),
                minlength=K + 1)[:K]
            # uniform-CAM reference: every valid pixel gets the first class
            # present in the ground truth (background if there is none)
            present = area_label.clone()
            present[bg] = 0
            first = int(present.nonzero()[0]) if present.any() else bg
            fill_pred = torch.zeros_like(area_label)
            fill_pred[first] = valid.sum()
            fill_hit = torch.zeros_like(area_label)
            fill_hit[first] = area_label[first]
            self.results.append((pred_hist.cpu().numpy(),
                                 hit_hist.cpu().numpy(),
                                 area_label.cpu().numpy(),
                                 fill_pred.cpu().numpy(),
                                 fill_hit.cpu().numpy()))

    def _areas(self, results: list):
        """Summed histograms -> (T, K) intersection / prediction areas and
        (K,) label area."""
        pred_hist = np.sum([r[0] for r in results], axis=0)
        hit_hist = np.sum([r[1] for r in results], axis=0)
        area_label = np.sum([r[2] for r in results], axis=0)
        bg = self.background_index

        def per_threshold(hist):
            # foreground for threshold i <=> num_fg > i
            above = np.cumsum(hist[:, ::-1], axis=1)[:, ::-1][:, 1:]
            below = np.cumsum(hist, axis=1)[:, :-1]      # num_fg <= i
            out = above.T.copy()                         # (T, K)
            out[:, bg] = below[bg]
            return out

        return per_threshold(hit_hist), per_threshold(pred_hist), area_label

    def compute_metrics(self, results: list) -> Dict[str, float]:
        logger: MMLogger = MMLogger.get_current_instance()
        inter, pred, label = self._areas(results)
        union = pred + label[None] - inter
        label_t = torch.from_numpy(label).double()
        mious, per_class = [], []
        for i in range(len(self.thresholds)):
            ret = IoUMetric.total_area_to_metrics(
                torch.from_numpy(inter[i]).double(),
                torch.from_numpy(union[i]).double(),
                torch.from_numpy(pred[i]).double(), label_t, ['mIoU'])
            per_class.append(ret['IoU'])
            mious.append(float(np.round(np.nanmean(ret['IoU']) * 100, 2)))
        best = self._pick(mious)
        t_best = float(self.thresholds[best])

        table = PrettyTable(['threshold', 'mIoU', ''])
        for i, (t, miou) in enumerate(zip(self.thresholds, mious)):
            table.add_row([f'{t:.3g}', f'{miou:.2f}',
                           '<- best' if i == best else ''])
        print_log('CAM mIoU per background threshold'
                  + (' (greedy stop)' if self.greedy else '') + ':\n'
                  + table.get_string(), logger)

        # per-class results at the best threshold (MCTformer logs FP / FN)
        i_, p_, u_ = inter[best], pred[best], union[best]
        with np.errstate(divide='ignore', invalid='ignore'):
            fp = (p_ - i_) / u_
            fn = (label - i_) / u_
            precision = i_ / p_
            recall = i_ / label
        classes = (self.dataset_meta or {}).get('classes')
        if classes is None or len(classes) != len(label):
            classes = [str(k) for k in range(len(label))]
        class_table = PrettyTable()
        class_table.add_column('Class', list(classes))
        for name, val in (('IoU', per_class[best]), ('FP', fp), ('FN', fn),
                          ('Precision', precision), ('Recall', recall)):
            class_table.add_column(name, np.round(val * 100, 2).tolist())
        print_log(f'per class results at background threshold {t_best:.3g}:'
                  f'\n{class_table.get_string()}', logger)

        fg = np.arange(len(label)) != self.background_index
        uniform = self._uniform_miou(results, label)
        print_log(f'uniform-CAM reference mIoU: {uniform:.2f} (CAM mIoU '
                  f'{mious[best]:.2f})', logger)
        metrics = OrderedDict(
            mIoU=mious[best],
            best_thr=t_best,
            mFP=float(np.round(np.nanmean(fp) * 100, 2)),
            mFN=float(np.round(np.nanmean(fn) * 100, 2)),
            fg_precision=self._percent(i_[fg].sum(), p_[fg].sum()),
            fg_recall=self._percent(i_[fg].sum(), label[fg].sum()),
            uniform_mIoU=uniform)
        if self.return_all:
            for t, miou in zip(self.thresholds, mious):
                metrics[f'mIoU@{t:.3g}'] = miou
        return metrics

    def _uniform_miou(self, results: list, label: np.ndarray) -> float:
        """Best mIoU (percent) of the two uniform-CAM predictions: all
        background, or every pixel the image's first labelled class."""
        bg = self.background_index
        total = label.sum()

        def miou(inter, pred):
            ret = IoUMetric.total_area_to_metrics(
                *(torch.from_numpy(np.asarray(a, np.float64))
                  for a in (inter, pred + label - inter, pred, label)),
                ['mIoU'])
            return float(np.round(np.nanmean(ret['IoU']) * 100, 2))

        all_bg_pred = np.zeros_like(label)
        all_bg_pred[bg] = total
        all_bg_inter = np.zeros_like(label)
        all_bg_inter[bg] = label[bg]
        fill_pred = np.sum([r[3] for r in results], axis=0)
        fill_hit = np.sum([r[4] for r in results], axis=0)
        return max(miou(all_bg_inter, all_bg_pred), miou(fill_hit, fill_pred))

    def _pick(self, mious: List[float]) -> int:
        """Index of the chosen threshold (first one on equal mIoU)."""
        if not self.greedy:
            return int(np.nanargmax(mious)) if not np.all(
                np.isnan(mious)) else 0
        best = 0
        for i in range(1, len(mious)):
            if not mious[i] > mious[best]:
                break
            best = i
        return best

    @staticmethod
    def _percent(num, den) -> float:
        return float(np.round(100.0 * num / den, 2)) if den else float('nan')
