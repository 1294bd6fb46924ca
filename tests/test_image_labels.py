"""Image-level labels: AddImageLevelLabel, LoadImageLevelLabelFromFile,
PackCAMInputs."""
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from mmcv.transforms import Compose as _Compose
from PIL import Image

from mmseg.registry import TRANSFORMS
from wsss_zoo.datasets.transforms import (AddImageLevelLabel,
                                          LoadImageLevelLabelFromFile,
                                          PackCAMInputs, load_label_file,
                                          load_npy_safely)

VOC12 = Path('/work/shared/data/voc12')
VOC_CLS_LABELS = VOC12 / 'cls_labels.npy'
needs_voc = pytest.mark.skipif(
    not VOC_CLS_LABELS.is_file(), reason='shared voc12/cls_labels.npy absent')


def Compose(cfgs):
    """mmcv's Compose with the transforms built from mmseg's registry."""
    return _Compose([TRANSFORMS.build(cfg) for cfg in cfgs])


def _results(mask, path='imgs/a.jpg'):
    return dict(img_path=path, seg_map_path=path.replace('.jpg', '.png'),
                gt_seg_map=np.asarray(mask, dtype=np.uint8),
                img=np.zeros(np.shape(mask) + (3, ), np.uint8))


# ---------------------------------------------------------------------------
# AddImageLevelLabel

def test_label_from_mask_skips_background_and_ignore():
    mask = np.zeros((6, 6), np.uint8)
    mask[0, :2] = 3      # segmentation class 3 -> CAM class 2
    mask[1, :] = 20      # tvmonitor -> CAM class 19
    mask[2, :] = 255     # ignore
    out = AddImageLevelLabel(num_classes=21)(_results(mask))
    label = out['img_label']
    assert label.dtype == np.float32 and label.shape == (20, )
    assert np.flatnonzero(label).tolist() == [2, 19]


def test_background_only_mask_gives_empty_label():
    label = AddImageLevelLabel(num_classes=21)(
        _results(np.zeros((4, 4))))['img_label']
    assert label.shape == (20, ) and not label.any()


def test_ade_style_reduce_zero_label_no_background(tmp_path):
    # raw ADE-style mask: 0 = "other" (-> 255), classes 1..150 (-> 0..149)
    raw = np.array([[0, 1, 1], [5, 150, 0]], np.uint8)
    Image.fromarray(raw).save(tmp_path / 'a.png')
    pipeline = Compose([
        dict(type='LoadAnnotations'),  # reduce_zero_label from the dataset
        dict(type='AddImageLevelLabel', num_classes=150,
             background_index=None),
    ])
    out = pipeline(dict(seg_map_path=str(tmp_path / 'a.png'),
                        reduce_zero_label=True, seg_fields=[]))
    assert set(np.unique(out['gt_seg_map']).tolist()) == {0, 4, 149, 255}
    assert out['img_label'].shape == (150, )
    assert np.flatnonzero(out['img_label']).tolist() == [0, 4, 149]


def test_bad_class_value_names_image_and_fix():
    mask = np.array([[0, 21, 7], [22, 255, 0]])
    with pytest.raises(ValueError) as err:
        AddImageLevelLabel(num_classes=21)(_results(mask, 'x/img_9.jpg'))
    msg = str(err.value)
    assert 'img_9.png' in msg and '[21, 22]' in msg
    assert 'num_classes' in msg and 'reduce_zero_label' in msg
    # ADE mask whose zero label was not reduced: 150 is out of range
    with pytest.raises(ValueError, match='reduce_zero_label'):
        AddImageLevelLabel(num_classes=150, background_index=None)(
            _results(np.array([[150, 3]])))


def test_missing_mask_and_bad_args():
    with pytest.raises(KeyError, match='LoadAnnotations'):
        AddImageLevelLabel(num_classes=21)(dict(img_path='a.jpg'))
    with pytest.raises(ValueError, match='background_index'):
        AddImageLevelLabel(num_classes=21, background_index=21)


# ---------------------------------------------------------------------------
# LoadImageLevelLabelFromFile

@needs_voc
def test_voc_cls_labels_real_file():
    ids = (VOC12 / 'train_id.txt').read_text().split()
    assert len(ids) == 1464
    t = LoadImageLevelLabelFromFile(str(VOC_CLS_LABELS), num_classes=20)
    assert len(t.labels) == 12031
    for image_id in ids[:5] + ids[-3:]:
        label = t(dict(img_path=f'data/JPEGImages/{image_id}.jpg'))[
            'img_label']
        assert label.dtype == np.float32 and label.shape == (20, )
        assert 1 <= label.sum() <= 6 and set(np.unique(label)) <= {0, 1}
    # 2007_000032: aeroplane (0) and person (14)
    label = t(dict(img_path='2007_000032.jpg'))['img_label']
    assert np.flatnonzero(label).tolist() == [0, 14]
    # the sample gets a copy: editing it does not touch the cache
    label[:] = 7
    assert t(dict(img_path='2007_000032.jpg'))['img_label'].max() == 1


@needs_voc
def test_label_file_loaded_once_and_not_pickled_with_transform():
    a = load_label_file(str(VOC_CLS_LABELS), 20)
    b = LoadImageLevelLabelFromFile(str(VOC_CLS_LABELS)).labels
    assert a is b
    t = LoadImageLevelLabelFromFile(str(VOC_CLS_LABELS), num_classes=20)
    blob = pickle.dumps(t)
    assert len(blob) < 10_000  # the 12k labels stay out of worker pickles
    t2 = pickle.loads(blob)
    assert t2.labels is a
    assert t2(dict(img_path='2007_000032.jpg'))['img_label'].sum() == 2


@needs_voc
def test_missing_id_and_num_classes_mismatch():
    t = LoadImageLevelLabelFromFile(str(VOC_CLS_LABELS), num_classes=20)
    with pytest.raises(KeyError) as err:
        t(dict(img_path='JPEGImages/not_an_image.jpg'))
    msg = str(err.value)
    assert 'not_an_image' in msg and 'cls_labels.npy' in msg
    assert '12031' in msg
    with pytest.raises(ValueError) as err:
        LoadImageLevelLabelFromFile(str(VOC_CLS_LABELS), num_classes=21)
    assert '20' in str(err.value) and '21' in str(err.value)


def _save_labels(path, labels):
    np.save(path, labels, allow_pickle=True)
    return str(path)


def test_npy_json_txt_formats_and_keys_with_extension(tmp_path):
    vec = np.array([0, 1, 0, 1], np.float32)
    npy = _save_labels(tmp_path / 'l.npy', {'COCO_1.jpg': vec, 'b': vec})
    assert np.array_equal(
        LoadImageLevelLabelFromFile(npy, 4)(
            dict(img_path='d/COCO_1.jpg'))['img_label'], vec)
    js = tmp_path / 'l.json'
    js.write_text(json.dumps({'im1': [0, 1, 0, 1]}))
    out = LoadImageLevelLabelFromFile(str(js), 4)(dict(img_path='x/im1.png'))
    assert out['img_label'].dtype == np.float32
    assert np.array_equal(out['img_label'], vec)
    txt = tmp_path / 'l.txt'
    txt.write_text('im1 1 3\nim2\n')
    t = LoadImageLevelLabelFromFile(str(txt), 4)
    assert np.array_equal(t(dict(img_path='im1.jpg'))['img_label'], vec)
    assert not t(dict(img_path='im2.jpg'))['img_label'].any()
    with pytest.raises(ValueError, match='num_classes'):
        LoadImageLevelLabelFromFile(str(txt))
    with pytest.raises(FileNotFoundError, match='AddImageLevelLabel'):
        LoadImageLevelLabelFromFile(str(tmp_path / 'nope.npy'))


def test_label_file_reloaded_when_changed(tmp_path):
    path = tmp_path / 'l.npy'
    _save_labels(path, {'a': np.ones(3, np.float32)})
    assert load_label_file(str(path))['a'].shape == (3, )
    os.remove(path)
    _save_labels(path, {'a': np.ones(5, np.float32)})
    os.utime(path, (1, 1))  # a different mtime even on coarse clocks
    assert load_label_file(str(path))['a'].shape == (5, )


class _Evil:
    """Unpickling this runs ``fn(*args)``."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


@pytest.mark.parametrize('attack', ['os.system', 'open', 'eval'])
def test_malicious_pickle_refused(tmp_path, attack):
    marker = tmp_path / 'pwned'
    payload = {
        'os.system': _Evil(os.system, f'touch {marker}'),
        'open': _Evil(open, str(marker), 'w'),
        'eval': _Evil(eval, f'open({str(marker)!r}, "w")'),
    }[attack]
    labels = {'a': np.ones(3, np.float32), 'b': payload}
    path = tmp_path / 'cls_labels.npy'
    np.save(path, np.array(labels, dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match='unsafe'):
        LoadImageLevelLabelFromFile(str(path), num_classes=3)
    with pytest.raises(ValueError, match='unsafe'):
        load_npy_safely(str(path))
    assert not marker.exists()
    # control: the payload is real, np.load(allow_pickle=True) runs it
    evil = np.load(path, allow_pickle=True).item()['b']
    if hasattr(evil, 'close'):
        evil.close()
    assert marker.exists()


def test_safe_loader_round_trips_numpy_content(tmp_path):
    content = {'a': np.arange(4, dtype=np.float32), 'b': np.float64(2.5),
               'c': [np.zeros((2, 2), np.int64), 'txt', b'raw'], 'd': 3}
    for proto in (2, 5):
        path = tmp_path / f'c{proto}.npy'
        array = np.array(content, dtype=object)
        with open(path, 'wb') as f:   # np.save with another pickle protocol
            np.lib.format.write_array_header_1_0(
                f, np.lib.format.header_data_from_array_1_0(array))
            pickle.dump(array, f, protocol=proto)
        got = load_npy_safely(str(path))
        assert np.array_equal(got['a'], content['a'])
        assert got['b'] == 2.5 and got['d'] == 3
        assert got['c'][1:] == ['txt', b'raw']
        assert got['c'][0].dtype == np.int64
    # plain arrays do not go through pickle at all
    np.save(tmp_path / 'p.npy', np.eye(2))
    assert np.array_equal(load_npy_safely(str(tmp_path / 'p.npy')), np.eye(2))


def test_non_dict_label_file(tmp_path):
    np.save(tmp_path / 'p.npy', np.eye(2))
    with pytest.raises(ValueError, match='dict'):
        LoadImageLevelLabelFromFile(str(tmp_path / 'p.npy'))


# ---------------------------------------------------------------------------
# PackCAMInputs

def test_pack_puts_gt_img_label_on_sample():
    mask = np.zeros((5, 7), np.uint8)
    mask[1:3, 1:3] = 4
    res = AddImageLevelLabel(num_classes=6)(_results(mask))
    packed = PackCAMInputs()(res)
    sample = packed['data_samples']
    assert packed['inputs'].shape == (3, 5, 7)
    assert isinstance(sample.gt_img_label, torch.Tensor)
    assert sample.gt_img_label.dtype == torch.float32
    assert sample.gt_img_label.tolist() == [0, 0, 0, 1, 0]
    assert 'gt_img_label' in sample.keys()           # a data field
    assert 'img_label' not in sample.metainfo_keys()
    assert 'gt_img_label' not in sample.metainfo_keys()
    assert sample.gt_sem_seg.data.shape == (1, 5, 7)
    # it travels with the sample (to / cpu / stacking in the segmentor)
    moved = sample.to('cpu')
    assert torch.equal(moved.gt_img_label, sample.gt_img_label)
    # meta_keys asking for img_label still keep it out of the metainfo
    res['img_label'] = res['img_label']
    sample = PackCAMInputs(meta_keys=('img_path', 'img_label'))(res)[
        'data_samples']
    assert sample.metainfo_keys() == ['img_path']


def test_pack_without_label_names_the_transforms():
    with pytest.raises(KeyError) as err:
        PackCAMInputs()(_results(np.zeros((3, 3))))
    assert 'AddImageLevelLabel' in str(err.value)
    assert 'LoadImageLevelLabelFromFile' in str(err.value)


def test_label_depends_only_on_the_set_of_classes():
    rng = np.random.default_rng(0)
    a = rng.choice([0, 2, 5, 255], size=(16, 16)).astype(np.uint8)
    b = a.copy()
    b[:8] = np.roll(b[:8], 3, axis=1)   # move pixels around
    b[b == 2] = 5                        # shrink class 2 ...
    b[0, 0] = 2                          # ... to one pixel
    assert not np.array_equal(a, b)
    assert set(np.unique(a)) == set(np.unique(b))
    pipeline = Compose([dict(type='AddImageLevelLabel', num_classes=6),
                        dict(type='PackCAMInputs')])
    la = pipeline(_results(a))['data_samples'].gt_img_label
    lb = pipeline(_results(b))['data_samples'].gt_img_label
    assert torch.equal(la, lb) and la.tolist() == [0, 1, 0, 0, 1]


def test_full_pipeline_from_files(tmp_path):
    """LoadImageFromFile + LoadAnnotations + crop + label + pack, as the
    configs build it, and the file label agrees with the mask label."""
    img = np.random.default_rng(1).integers(0, 255, (20, 24, 3), np.uint8)
    mask = np.zeros((20, 24), np.uint8)
    mask[2:8, 2:8] = 1
    mask[10:18, 12:20] = 3
    Image.fromarray(img).save(tmp_path / 'im.png')
    Image.fromarray(mask).save(tmp_path / 'im_gt.png')
    labels = _save_labels(tmp_path / 'cls_labels.npy',
                          {'im': np.array([1, 0, 1, 0], np.float32)})
    info = dict(img_path=str(tmp_path / 'im.png'),
                seg_map_path=str(tmp_path / 'im_gt.png'),
                reduce_zero_label=False, seg_fields=[])
    outs = []
    for label_step in (dict(type='AddImageLevelLabel', num_classes=5),
                       dict(type='LoadImageLevelLabelFromFile',
                            label_file=labels, num_classes=4)):
        pipeline = Compose([
            dict(type='LoadImageFromFile'),
            dict(type='LoadAnnotations'),
            dict(type='RandomFlip', prob=1.0),
            label_step,
            dict(type='PackCAMInputs'),
        ])
        outs.append(pipeline(dict(info))['data_samples'].gt_img_label)
    assert torch.equal(outs[0], outs[1])
    assert TRANSFORMS.get('PackCAMInputs') is PackCAMInputs


def test_synthshapes_label_file_agrees_with_masks(tmp_path):
    """SynthShapes' cls_labels.npy (MCTformer format) == labels from masks."""
    from wsss_zoo.datasets.synthetic import make_synthshapes
    root = tmp_path / 'synth'
    make_synthshapes(str(root), num_train=4, num_val=1, img_size=32)
    from_mask = Compose([dict(type='LoadAnnotations'),
                         dict(type='AddImageLevelLabel', num_classes=6)])
    from_file = TRANSFORMS.build(dict(
        type='LoadImageLevelLabelFromFile',
        label_file=str(root / 'cls_labels.npy'), num_classes=5))
    ids = (root / 'ImageSets/Segmentation/trainval.txt').read_text().split()
    assert len(ids) == 5
    for image_id in ids:
        info = dict(img_path=str(root / f'JPEGImages/{image_id}.jpg'),
                    seg_map_path=str(
                        root / f'SegmentationClass/{image_id}.png'),
                    reduce_zero_label=False, seg_fields=[])
        expected = from_mask(dict(info))['img_label']
        assert expected.any()
        assert np.array_equal(from_file(dict(info))['img_label'], expected)
