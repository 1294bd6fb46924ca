"""SynthShapes: deterministic generation, both layouts, mmseg loading."""
import filecmp
import json
import os
import os.path as osp
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import wsss_zoo  # noqa: F401  (before mmseg.models: compat stand-ins)
from mmengine.registry import DefaultScope
from mmseg.registry import DATASETS
from wsss_zoo.datasets.synthetic import (SYNTH_CLASSES, SYNTH_PALETTE,
                                         make_synthshapes, render_image)

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY = dict(num_train=12, num_val=4, img_size=64, seed=0)
NUM_FG = len(SYNTH_CLASSES) - 1


@pytest.fixture(scope='module')
def root(tmp_path_factory):
    out = tmp_path_factory.mktemp('synth') / 'synthshapes'
    make_synthshapes(str(out), **TINY)
    return out


def _files(root):
    return sorted(
        osp.relpath(osp.join(d, f), root)
        for d, _, names in os.walk(root) for f in names)


def _ids(root, split):
    return (root / 'ImageSets' / 'Segmentation' /
            f'{split}.txt').read_text().split()


def test_classes_and_palette():
    assert SYNTH_CLASSES[0] == 'background' and len(SYNTH_CLASSES) == 6
    assert len(SYNTH_PALETTE) == len(SYNTH_CLASSES)


def test_generation_is_deterministic(root, tmp_path):
    again = tmp_path / 'again'
    make_synthshapes(str(again), **TINY)
    files = _files(root)
    assert files == _files(again)
    _, mismatch, errors = filecmp.cmpfiles(root, again, files, shallow=False)
    assert not mismatch and not errors
    other = tmp_path / 'seed1'
    make_synthshapes(str(other), **dict(TINY, seed=1))
    first = 'JPEGImages/train_00000.jpg'
    assert not filecmp.cmp(root / first, other / first, shallow=False)


def test_images_do_not_depend_on_split_size(root, tmp_path):
    bigger = tmp_path / 'bigger'
    make_synthshapes(str(bigger), **dict(TINY, num_train=13, num_val=5))
    for name in ('JPEGImages/train_00011.jpg', 'SegmentationClass/'
                 'val_00003.png'):
        assert filecmp.cmp(root / name, bigger / name, shallow=False)


def test_voc_and_ade_layouts_agree(root):
    train, val = _ids(root, 'train'), _ids(root, 'val')
    assert len(train) == 12 and len(val) == 4
    assert _ids(root, 'trainval') == train + val
    for split, ids in (('training', train), ('validation', val)):
        images = sorted(os.listdir(root / 'images' / split))
        masks = sorted(os.listdir(root / 'annotations' / split))
        assert images == sorted(i + '.jpg' for i in ids)
        assert masks == sorted(i + '.png' for i in ids)
        for i in ids:
            assert filecmp.cmp(root / 'JPEGImages' / f'{i}.jpg',
                               root / 'images' / split / f'{i}.jpg',
                               shallow=False)
            assert filecmp.cmp(root / 'SegmentationClass' / f'{i}.png',
                               root / 'annotations' / split / f'{i}.png',
                               shallow=False)
    assert (root / 'classes.txt').read_text().split() == list(SYNTH_CLASSES)
    meta = json.loads((root / 'meta.json').read_text())
    assert meta['args'] == dict(TINY, min_objects=1, max_objects=3)


def test_masks_match_cls_labels(root):
    labels = np.load(root / 'cls_labels.npy', allow_pickle=True).item()
    ids = _ids(root, 'trainval')
    assert list(labels) == ids
    for i in ids:
        png = Image.open(root / 'SegmentationClass' / f'{i}.png')
        assert png.mode == 'P'
        mask = np.array(png)
        img = np.array(Image.open(root / 'JPEGImages' / f'{i}.jpg'))
        assert img.shape == (64, 64, 3) and mask.shape == (64, 64)
        assert mask.dtype == np.uint8 and mask.max() <= NUM_FG
        value = labels[i]
        assert type(i) is str and value.dtype == np.float32
        assert value.shape == (NUM_FG, )
        expected = np.zeros(NUM_FG, np.float32)
        expected[np.unique(mask)[1:] - 1] = 1
        np.testing.assert_array_equal(value, expected)
        assert value.sum() >= 1


def test_objects_and_class_coverage(root):
    meta = json.loads((root / 'meta.json').read_text())
    labels = np.load(root / 'cls_labels.npy', allow_pickle=True).item()
    for split in ('train', 'val'):
        summary = meta['summary'][split]
        assert summary['objects_per_image'] >= 1.5
        present = np.stack([labels[i] for i in _ids(root, split)])
        assert present.any(0).all(), f'a class is missing from {split}'
        assert summary['images_per_class'] == dict(
            zip(SYNTH_CLASSES[1:], present.sum(0).astype(int).tolist()))


def test_colour_does_not_identify_the_class():
    """Per-instance mean colours: class means agree, spread is within."""
    colours = {c: [] for c in range(1, NUM_FG + 1)}
    for i in range(150):
        img, mask, _ = render_image(np.random.default_rng([3, i]), 48)
        for c in np.unique(mask)[1:]:
            colours[c].append(img[mask == c].mean(0))
    means = np.stack([np.mean(colours[c], 0) for c in colours])  # (5, 3)
    within = np.mean([np.std(colours[c], 0) for c in colours], 0)  # (3, )
    assert min(len(v) for v in colours.values()) >= 30
    assert (within > 25).all()  # colours vary a lot inside each class
    spread = means.max(0) - means.min(0)
    assert (spread < 0.6 * within).all(), (means, within)


@pytest.mark.parametrize('layout', ['voc', 'ade'])
def test_dataset_loads_through_mmseg(root, layout):
    if layout == 'voc':
        split = dict(ann_file='ImageSets/Segmentation/val.txt',
                     data_prefix=dict(img_path='JPEGImages',
                                      seg_map_path='SegmentationClass'))
    else:
        split = dict(data_prefix=dict(img_path='images/validation',
                                      seg_map_path='annotations/validation'))
    with DefaultScope.overwrite_default_scope('mmseg'):  # mmseg transforms
        dataset = DATASETS.build(
            dict(type='SynthShapesDataset', data_root=str(root),
                 pipeline=[dict(type='LoadImageFromFile'),
                           dict(type='LoadAnnotations')], **split))
        sample = dataset[0]
    assert len(dataset) == 4
    assert dataset.metainfo['classes'] == SYNTH_CLASSES
    assert sample['img'].shape == (64, 64, 3)
    assert sample['gt_seg_map'].shape == (64, 64)
    assert sample['img_path'].endswith('val_00000.jpg')
    expected = np.array(Image.open(root / 'SegmentationClass' /
                                   'val_00000.png'))
    np.testing.assert_array_equal(sample['gt_seg_map'], expected)


@pytest.mark.parametrize('missing', ['root', 'images'])
def test_missing_dataset_names_path_and_command(root, tmp_path, missing):
    data_root = tmp_path / 'nowhere' if missing == 'root' else root
    with pytest.raises(FileNotFoundError) as err:
        DATASETS.build(
            dict(type='SynthShapesDataset', data_root=str(data_root),
                 data_prefix=dict(img_path='images/nothing',
                                  seg_map_path='annotations/nothing')))
    message = str(err.value)
    looked_at = data_root if missing == 'root' else root / 'images/nothing'
    assert str(looked_at) in message
    assert (f'python tools/make_synthetic_dataset.py --out {data_root}'
            in message)


def test_cli_skips_unchanged_and_forces(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO_ROOT / 'tools'))
    sys.modules.pop('make_synthetic_dataset', None)
    import make_synthetic_dataset as cli
    out = tmp_path / 'cli'
    argv = ['--out', str(out), '--num-train', '5', '--num-val', '5',
            '--img-size', '48']
    summary = cli.main(argv)
    assert summary['train']['images'] == 5
    assert 'written to' in capsys.readouterr().out
    stamp = os.stat(out / 'meta.json').st_mtime_ns
    assert cli.main(argv) == summary
    assert 'already' in capsys.readouterr().out
    assert os.stat(out / 'meta.json').st_mtime_ns == stamp
    cli.main(argv + ['--force'])
    assert 'written to' in capsys.readouterr().out
    argv[3] = '3'  # other arguments: regenerated, no stale files left
    assert argv[2] == '--num-train'
    cli.main(argv)
    assert 'written to' in capsys.readouterr().out
    assert len(os.listdir(out / 'images' / 'training')) == 3
    assert len(os.listdir(out / 'JPEGImages')) == 8
