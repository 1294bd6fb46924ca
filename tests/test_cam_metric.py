"""CAMThresholdSweepMetric: exact hand example, IoUMetric equality,
batch / rank invariance."""
import numpy as np
import pytest
import torch
from mmengine.evaluator import Evaluator
from mmengine.structures import PixelData

from mmseg.evaluation import IoUMetric
from mmseg.registry import METRICS
from mmseg.structures import SegDataSample
from wsss_zoo.evaluation.cam_metric import CAMThresholdSweepMetric


def _sample(scores, gt):
    """Evaluator-style dict of one prediction, scores (K, H, W)."""
    return dict(seg_logits=dict(data=torch.as_tensor(scores)),
                gt_sem_seg=dict(data=torch.as_tensor(gt)[None]))


def _metric(classes=3, **kwargs):
    metric = METRICS.build(dict(type='CAMThresholdSweepMetric', **kwargs))
    metric.dataset_meta = dict(classes=[f'c{k}' for k in range(classes)])
    return metric


def _run(metric, samples, batch_size=None):
    batch_size = batch_size or len(samples)
    for i in range(0, len(samples), batch_size):
        metric.process({}, samples[i:i + batch_size])
    return metric.compute_metrics(metric.results)


def _hand_example():
    """3 classes (bg, A, B), 1 x 7 image; columns:
    gt        0    0    0    1    1    2    255
    A score  .2   .6   .65  .8   .4   0    1
    B score   0    0    0    0    0   .9    0
    """
    scores = torch.zeros(3, 1, 7)
    scores[0] = 0.123  # whatever the segmentor's threshold was
    scores[1, 0] = torch.tensor([.2, .6, .65, .8, .4, 0, 1])
    scores[2, 0, 5] = .9
    gt = torch.tensor([[0, 0, 0, 1, 1, 2, 255]])
    return [_sample(scores, gt)]


def test_hand_computed_sweep():
    # t=.1: IoU bg 0,    A 2/5, B 1 -> 46.67
    # t=.3: IoU bg 1/3,  A 2/4, B 1 -> 61.11
    # t=.5: IoU bg 1/4,  A 1/4, B 1 -> 50.00
    # t=.7: IoU bg 3/4,  A 1/2, B 1 -> 75.00  (best)
    metric = _metric(thresholds=[.7, .1, .5, .3], return_all=True)
    res = _run(metric, _hand_example())
    assert metric.thresholds.tolist() == [.1, .3, .5, .7]
    assert res['mIoU'] == 75.0 and res['best_thr'] == 0.7
    assert [res[f'mIoU@{t}'] for t in ('0.1', '0.3', '0.5', '0.7')] == [
        46.67, 61.11, 50.0, 75.0]
    # at t=.7: bg P=4 T=3 TP=3, A P=1 T=2 TP=1, B P=T=TP=1
    assert res['mFP'] == 8.33 and res['mFN'] == 16.67
    assert res['fg_precision'] == 100.0 and res['fg_recall'] == 66.67


def test_greedy_stop_like_mctformer_curve():
    res = _run(_metric(thresholds=[.1, .3, .5, .7], greedy=True),
               _hand_example())
    assert res['mIoU'] == 61.11 and res['best_thr'] == 0.3
    assert 'mIoU@0.3' not in res


def test_log_marks_best_threshold(capsys):
    from mmengine.logging import MMLogger
    MMLogger.get_instance('cam_metric_test', log_level='INFO')
    _run(_metric(thresholds=[.1, .3, .5, .7]), _hand_example())
    out = capsys.readouterr().out
    assert '<- best' in out and 'per class results at background ' \
        'threshold 0.7' in out and 'c2' in out


def _random_samples(num, classes=5, seed=0, levels=None):
    """CAMSegmentor-like outputs: scores in [0, 1], classes outside the image
    label 0, values on the threshold grid (exact ties) when ``levels``."""
    g = torch.Generator().manual_seed(seed)
    samples = []
    for i in range(num):
        H, W = 9 + i % 4, 13 - i % 3
        if levels is None:
            cams = torch.rand(classes - 1, H, W, generator=g)
        else:
            idx = torch.randint(0, len(levels), (classes - 1, H, W),
                                generator=g)
            cams = levels[idx]
        allowed = torch.rand(classes - 1, generator=g) < 0.6
        cams = cams * allowed[:, None, None]
        scores = torch.cat([torch.full((1, H, W), 0.4), cams])
        gt = torch.randint(0, classes, (H, W), generator=g)
        gt[torch.rand(H, W, generator=g) < 0.1] = 255
        samples.append(_sample(scores, gt))
    return samples


def _iou_metric_miou(samples, t, classes, bg=0):
    """mmseg's IoUMetric on predictions whose background channel is t."""
    ref = IoUMetric()
    ref.dataset_meta = dict(classes=[f'c{k}' for k in range(classes)])
    preds = []
    for s in samples:
        scores = s['seg_logits']['data'].clone()
        scores[bg] = t   # float32(t), as CAMSegmentor fills it
        preds.append(dict(pred_sem_seg=dict(data=scores.argmax(0, True)),
                          gt_sem_seg=s['gt_sem_seg']))
    ref.process({}, preds)
    return ref.compute_metrics(ref.results)['mIoU']


@pytest.mark.parametrize('on_grid', [False, True])
def test_equals_iou_metric_at_each_threshold(on_grid):
    classes = 5
    thresholds = np.round(np.arange(0, 1, 0.05), 6)
    levels = torch.tensor(thresholds, dtype=torch.float32)
    samples = _random_samples(6, classes, levels=levels if on_grid else None)
    res = _run(_metric(classes, return_all=True), samples)
    assert res['mIoU'] == max(res[f'mIoU@{t:.3g}'] for t in thresholds)
    for t in thresholds:
        assert res[f'mIoU@{t:.3g}'] == _iou_metric_miou(samples, t, classes)


def test_background_channel_not_first():
    """Ties between a threshold and a class before the background channel
    go to the class (first maximum), as torch.argmax."""
    thresholds = np.round(np.arange(0, 1, 0.1), 6)
    levels = torch.tensor(thresholds, dtype=torch.float32)
    samples = _random_samples(4, 5, seed=7, levels=levels)
    for s in samples:   # move the background channel to index 2
        s['seg_logits']['data'] = s['seg_logits']['data'][[1, 2, 0, 3, 4]]
        gt = s['gt_sem_seg']['data']
        s['gt_sem_seg']['data'] = torch.where(
            gt == 0, 2, torch.where((gt == 1) | (gt == 2), gt - 1, gt))
    res = _run(_metric(5, thresholds=thresholds, background_index=2,
                       return_all=True), samples)
    for t in thresholds:
        assert res[f'mIoU@{t:.3g}'] == _iou_metric_miou(samples, t, 5, bg=2)


def test_batch_split_and_rank_invariance():
    samples = _random_samples(10, seed=3)
    whole = _run(_metric(5, return_all=True), samples)
    for batch_size in (1, 3, 4):
        assert _run(_metric(5, return_all=True), samples, batch_size) == whole
    # two "ranks" each process part of the data; collect_results
    # concatenates their results (in rank-interleaved order)
    ranks = [_metric(5, return_all=True) for _ in range(2)]
    for i, s in enumerate(samples):
        ranks[i % 2].process({}, [s])
    gathered = ranks[1].results + ranks[0].results
    assert ranks[0].compute_metrics(gathered) == whole
    # results are small per-image arrays, never maps
    assert all(a.size <= 5 * 21 for r in ranks[0].results for a in r)


def test_through_mmengine_evaluator_with_seg_data_samples():
    samples = _random_samples(4, seed=5)
    evaluator = Evaluator(_metric(5, thresholds=[0.2, 0.4, 0.6]))
    evaluator.dataset_meta = dict(classes=[f'c{k}' for k in range(5)])
    packed = []
    for s in samples:
        ds = SegDataSample()
        ds.seg_logits = PixelData(data=s['seg_logits']['data'])
        ds.gt_sem_seg = PixelData(data=s['gt_sem_seg']['data'])
        packed.append(ds)
    evaluator.process(packed[:3])
    evaluator.process(packed[3:])
    res = evaluator.evaluate(len(packed))
    ref = _run(_metric(5, thresholds=[0.2, 0.4, 0.6]), samples)
    assert res == ref
    assert res['best_thr'] in (0.2, 0.4, 0.6)


def test_defaults_and_errors():
    metric = CAMThresholdSweepMetric()
    assert np.allclose(metric.thresholds, np.arange(0, 1, 0.05))
    assert len(metric.thresholds) == 20
    assert CAMThresholdSweepMetric(start=0, stop=0.6, step=0.01) \
        .thresholds[-1] == 0.59
    with pytest.raises(ValueError, match='IoUMetric'):
        CAMThresholdSweepMetric(background_index=None)
    with pytest.raises(ValueError, match='thresholds'):
        CAMThresholdSweepMetric(thresholds=[])
    metric = _metric(3)
    bad = _sample(torch.rand(3, 2, 2), torch.tensor([[0, 1], [3, 255]]))
    with pytest.raises(ValueError, match=r'\[3\]'):
        metric.process({}, [bad])


def test_uniform_cam_reference():
    # hand example: valid pixels gt = [0 0 0 1 1 2]; first present fg = 1.
    # all background: IoU bg 3/6, A 0, B 0 -> 16.67
    # all class A:    IoU bg 0, A 2/6, B 0 -> 11.11  => reference 16.67
    res = _run(_metric(thresholds=[.7, .1]), _hand_example())
    assert res['uniform_mIoU'] == 16.67
    # an image mostly covered by its first class: filling wins
    scores = torch.zeros(3, 1, 4)
    gt = torch.tensor([[1, 1, 1, 0]])
    res = _run(_metric(thresholds=[.5]), [_sample(scores, gt)])
    # fill A: bg 0/1, A 3/4, B nan -> mean(0, .75) = 37.5; all bg: 1/4 / 2
    assert res['uniform_mIoU'] == 37.5
    assert res['mIoU'] == 12.5  # the all-zero CAM is all background
