"""Dense CRF refinement of pseudo masks (WeakTr's label CRF): it moves a
coarse mask onto the object's colour boundary, keeps dataset class indices,
refuses bad settings, names the fix when pydensecrf2 is missing, and runs
inside ``PseudoLabelWriter`` / ``tools/make_pseudo_labels.py --crf``."""
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from wsss_zoo.evaluation.dense_crf import (CRF_PRESETS, crf_refine_mask,
                                           crf_settings)
from wsss_zoo.evaluation.pseudo_label_writer import PseudoLabelWriter

H, W = 48, 64


def scene(seed=0):
    """A red disc (class 7) and a blue square (class 12) on a grey,
    slightly noisy background; returns image (H, W, 3) uint8 and mask."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:H, :W]
    mask = np.zeros((H, W), np.int64)
    mask[(yy - 24)**2 + (xx - 18)**2 <= 11**2] = 7
    mask[10:34, 40:58] = 12
    colours = {0: (128, 128, 128), 7: (220, 30, 30), 12: (30, 40, 210)}
    image = np.zeros((H, W, 3), np.float64)
    for cls, rgb in colours.items():
        image[mask == cls] = rgb
    image += rng.normal(0, 6, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), mask


def coarse(mask):
    """A CAM-like mask: every object region grown by 5 px (blobby)."""
    out = np.zeros_like(mask)
    for cls in np.unique(mask)[1:]:
        region = torch.from_numpy((mask == cls).astype(np.float32))[None,
                                                                      None]
        grown = torch.nn.functional.max_pool2d(region, 11, 1, 5)[0, 0] > 0
        out[grown.numpy() & (out == 0)] = cls
    return out


def iou(a, b, cls):
    inter = ((a == cls) & (b == cls)).sum()
    return inter / ((a == cls) | (b == cls)).sum()


def test_crf_moves_a_coarse_mask_onto_the_object_boundary():
    image, truth = scene()
    rough = coarse(truth)
    refined = crf_refine_mask(image, rough, classes=[7, 12])
    for cls in (7, 12):
        # measured: 0.40 -> 0.75 (disc), 0.45 -> 0.68 (square)
        assert iou(refined, truth, cls) > iou(rough, truth, cls) + 0.2
    assert set(np.unique(refined)) <= {0, 7, 12}
    assert refined.dtype == rough.dtype and refined.shape == rough.shape


def test_crf_labels_are_background_and_the_image_classes():
    image, truth = scene()
    rough = coarse(truth)
    # an image-level class absent from the mask can be assigned too, and
    # is a label of the CRF: the output stays in {0} U classes U mask
    refined = crf_refine_mask(image, rough, classes=[3, 7, 12])
    assert set(np.unique(refined)) <= {0, 3, 7, 12}
    # classes=None: the classes in the mask
    assert set(np.unique(crf_refine_mask(image, rough))) <= {0, 7, 12}
    # background only: nothing to refine
    empty = np.zeros((H, W), np.int64)
    assert np.array_equal(crf_refine_mask(image, empty), empty)


def test_presets_are_the_originals_and_settings_are_checked():
    assert CRF_PRESETS['voc'] == dict(
        iters=10, gt_prob=0.7, gaussian_sxy=4, gaussian_compat=3,
        bilateral_sxy=83, bilateral_srgb=5, bilateral_compat=3)
    assert crf_settings('coco')['bilateral_compat'] == 10
    assert crf_settings(dict(preset='coco', iters=5))['iters'] == 5
    with pytest.raises(ValueError, match='unknown CRF preset'):
        crf_settings('ade')
    with pytest.raises(ValueError, match='unknown CRF settings'):
        crf_settings(dict(sigma=3))
    with pytest.raises(ValueError, match='gt_prob'):
        crf_settings(dict(gt_prob=1.0))
    image, truth = scene()
    with pytest.raises(ValueError, match='differ in size'):
        crf_refine_mask(image[:-1], truth)


def test_missing_package_names_the_fix(monkeypatch):
    monkeypatch.setitem(sys.modules, 'pydensecrf', None)
    monkeypatch.setitem(sys.modules, 'pydensecrf.densecrf', None)
    image, truth = scene()
    with pytest.raises(ImportError, match=r'\.\[crf\]'):
        crf_refine_mask(image, truth)
    with pytest.raises(ImportError, match=r'\.\[crf\]'):
        PseudoLabelWriter(out_dir='unused', crf='voc')


def test_writer_refines_with_the_image_level_classes(tmp_path):
    image, truth = scene()
    img_path = tmp_path / 'img_0001.png'
    Image.fromarray(image).save(img_path)
    rough = coarse(truth)
    label = torch.zeros(20)
    label[[6, 11]] = 1  # CAM classes 6, 11 = mask values 7, 12
    sample = dict(img_path=str(img_path), gt_img_label=label,
                  pred_sem_seg=dict(data=torch.from_numpy(rough)[None]))
    out = tmp_path / 'masks'
    writer = PseudoLabelWriter(out_dir=str(out), crf='voc')
    writer.process(None, [sample])
    written = np.array(Image.open(out / 'img_0001.png'))
    expected = crf_refine_mask(image, rough, classes=[7, 12], crf='voc')
    assert np.array_equal(written, expected)
    assert not np.array_equal(written, rough)
    with pytest.raises(ValueError, match='background'):
        PseudoLabelWriter(out_dir=str(out), crf='voc', background_index=None)
