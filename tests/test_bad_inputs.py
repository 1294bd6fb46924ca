"""The README's bad-input table ("Reliable at scale", "Bad input"), one
test per row:
each bad input gives a clear error naming the file / id and the fix, or
the documented handling."""
import io
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from mmengine.registry import init_default_scope
from PIL import Image

from mmseg.registry import DATASETS, MODELS, TRANSFORMS
from mmseg.structures import SegDataSample
from wsss_zoo.datasets.transforms import broken_image_reason

NUM_FG = 5


@pytest.fixture(autouse=True)
def _scope():
    init_default_scope('mmseg')


def _load(path):
    return TRANSFORMS.build(dict(type='LoadImageFromFile'))(
        dict(img_path=str(path)))


def _jpeg(size=(40, 50), seed=0):
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray((rng.random(size + (3, )) * 255).astype(np.uint8)).save(
        buf, 'JPEG')
    return buf.getvalue()


# ---------------------------------------------------------------------------
# row: corrupt / truncated / empty / missing image file

@pytest.mark.parametrize('kind', ['garbage', 'truncated_jpg', 'truncated_png',
                                  'empty'])
def test_broken_image_error_names_file_and_fix(tmp_path, kind):
    data = _jpeg()
    png = io.BytesIO()
    Image.new('RGB', (30, 20), (9, 9, 9)).save(png, 'PNG')
    content = dict(garbage=b'this is not an image' * 10,
                   truncated_jpg=data[:len(data) // 2],
                   truncated_png=png.getvalue()[:-20], empty=b'')[kind]
    path = tmp_path / ('img_007.png' if 'png' in kind else 'img_007.jpg')
    path.write_bytes(content)
    with pytest.raises(ValueError) as err:
        _load(path)
    msg = str(err.value)
    assert str(path) in msg and "remove its id 'img_007'" in msg
    assert 'restore it' in msg


def test_image_check_accepts_whole_files_with_trailing_bytes():
    data = _jpeg()
    assert broken_image_reason(data) is None
    # bytes after the end-of-image marker (some cameras append data)
    assert broken_image_reason(data + b'\0' * 200) is None
    assert 'truncated JPEG' in broken_image_reason(data[:-300])


def test_missing_image_file_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="id 'gone'.*split file"):
        _load(tmp_path / 'gone.jpg')


def test_corrupt_image_in_a_dataset_names_the_file(tmp_path):
    from wsss_zoo.datasets.synthetic import make_synthshapes
    root = tmp_path / 'synth'
    make_synthshapes(str(root), num_train=3, num_val=1, seed=0)
    ids = (root / 'ImageSets/Segmentation/train.txt').read_text().split()
    broken = root / 'JPEGImages' / f'{ids[1]}.jpg'
    broken.write_bytes(broken.read_bytes()[:300])  # cut off mid-scan
    dataset = DATASETS.build(dict(
        type='SynthShapesDataset', data_root=str(root),
        data_prefix=dict(img_path='JPEGImages',
                         seg_map_path='SegmentationClass'),
        ann_file='ImageSets/Segmentation/train.txt',
        pipeline=[dict(type='LoadImageFromFile'),
                  dict(type='LoadAnnotations'),
                  dict(type='AddImageLevelLabel', num_classes=NUM_FG + 1),
                  dict(type='PackCAMInputs')]))
    assert dataset[0]['inputs'].shape == (3, 96, 96)
    with pytest.raises(ValueError, match=f'{broken}.*{ids[1]}'):
        dataset[1]


# ---------------------------------------------------------------------------
# row: grayscale, RGBA and 16-bit images are converted to 8-bit BGR

def test_grayscale_rgba_16bit_are_converted(tmp_path):
    rng = np.random.default_rng(0)
    gray = (rng.random((10, 12)) * 255).astype(np.uint8)
    Image.fromarray(gray, 'L').save(tmp_path / 'gray.png')
    rgba = (rng.random((10, 12, 4)) * 255).astype(np.uint8)
    Image.fromarray(rgba, 'RGBA').save(tmp_path / 'rgba.png')
    deep = (rng.random((10, 12, 3)) * 65535).astype(np.uint16)
    cv2.imwrite(str(tmp_path / 'deep.png'), deep)  # 16-bit BGR PNG
    for name in ('gray', 'rgba', 'deep'):
        img = _load(tmp_path / f'{name}.png')['img']
        assert img.shape == (10, 12, 3) and img.dtype == np.uint8, name
    img = _load(tmp_path / 'gray.png')['img']
    assert all(np.array_equal(img[..., c], gray) for c in range(3))
    img = _load(tmp_path / 'rgba.png')['img']  # alpha dropped, BGR order
    assert np.array_equal(img[..., ::-1], rgba[..., :3])
    img = _load(tmp_path / 'deep.png')['img']  # high byte kept
    assert np.array_equal(img, (deep >> 8).astype(np.uint8))


# ---------------------------------------------------------------------------
# model-level rows

def _model(num_classes=NUM_FG, patch=8):
    torch.manual_seed(0)
    return MODELS.build(dict(
        type='CAMSegmentor',
        data_preprocessor=dict(type='CAMDataPreProcessor', mean=[127.5] * 3,
                               std=[127.5] * 3, size=(48, 48),
                               test_cfg=dict(size_divisor=patch)),
        backbone=dict(type='MCTformerV2', img_size=48, patch_size=patch,
                      embed_dims=32, num_layers=2, num_heads=2,
                      num_classes=num_classes, drop_path_rate=0.0),
        cam_head=dict(type='MCTHead', num_classes=num_classes,
                      in_channels=32, version='v2', cam_layers=2),
        refiners=[dict(type='PatchAffinityRefiner')])).eval()


def _samples(shapes, labels, path='img_{}.jpg'):
    out = []
    for i, ((h, w), label) in enumerate(zip(shapes, labels)):
        s = SegDataSample(metainfo=dict(ori_shape=(h, w), img_shape=(h, w),
                                        img_path=path.format(i)))
        s.set_field(torch.as_tensor(label, dtype=torch.float32),
                    'gt_img_label')
        out.append(s)
    return out


def test_label_without_foreground_gives_finite_loss_and_background_cam():
    model = _model().train()
    images = torch.rand(2, 3, 48, 48)
    labels = [np.zeros(NUM_FG), np.eye(NUM_FG)[2]]
    losses = model.loss(images, _samples([(48, 48)] * 2, labels))
    total = sum(v for k, v in losses.items() if 'loss' in k)
    assert torch.isfinite(total)
    total.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters()
               if p.grad is not None)
    model.eval()
    with torch.no_grad():
        out = model.predict(images, _samples([(48, 48)] * 2, labels))
    assert torch.isfinite(out[0].seg_logits.data).all()
    assert (out[0].pred_sem_seg.data == 0).all()  # all background
    assert out[0].seg_logits.data[1:].abs().max() == 0


def test_image_smaller_than_a_patch_names_the_file():
    model = _model()
    with pytest.raises(ValueError, match=r'tiny_0\.png is 5x6 .*8x8 patch'
                       r'.*Resize'):
        model.predict(torch.rand(1, 3, 5, 6),
                      _samples([(5, 6)], [np.ones(NUM_FG)], 'tiny_{}.png'))


def test_odd_sizes_floor_the_patch_grid_and_cover_the_image():
    """45x61 with patch 8: a 5x7 patch grid (the stride-8 patch conv drops
    the last rows / columns, as the original), CAMs upsampled to 45x61."""
    model = _model()
    data = dict(inputs=[torch.randint(0, 255, (3, 45, 61), dtype=torch.uint8),
                        torch.randint(0, 255, (3, 48, 48), dtype=torch.uint8)],
                data_samples=_samples([(45, 61), (48, 48)],
                                      [np.ones(NUM_FG)] * 2))
    with torch.no_grad():
        out = model.test_step(data)
    assert out[0].seg_logits.data.shape == (NUM_FG + 1, 45, 61)
    assert out[1].seg_logits.data.shape == (NUM_FG + 1, 48, 48)
    assert all(torch.isfinite(o.seg_logits.data).all() for o in out)


def test_num_classes_config_vs_labels():
    model = _model()
    with pytest.raises(ValueError, match='7 classes but the CAM head has '
                       'num_classes=5'):
        model.train().loss(torch.rand(1, 3, 48, 48),
                           _samples([(48, 48)], [np.ones(7)]))
    with pytest.raises(ValueError, match=r'img_0\.jpg: .*7 classes.*'
                       'num_classes=5'):
        model.eval().predict(torch.rand(1, 3, 48, 48),
                             _samples([(48, 48)], [np.ones(7)]))


def test_num_classes_config_vs_label_file(tmp_path):
    labels = {'a': np.ones(20, np.float32)}
    np.save(tmp_path / 'cls_labels.npy', labels, allow_pickle=True)
    with pytest.raises(ValueError, match='20 classes but num_classes=5'):
        TRANSFORMS.build(dict(type='LoadImageLevelLabelFromFile',
                              label_file=str(tmp_path / 'cls_labels.npy'),
                              num_classes=5))


def test_num_classes_config_vs_checkpoint(tmp_path):
    from mmengine.runner import load_checkpoint

    from wsss_zoo.utils.launch import load_checkpoint_strict
    ckpt = tmp_path / 'three_classes.pth'
    torch.save({'state_dict': _model(num_classes=3).state_dict()}, ckpt)
    model = _model(num_classes=5)

    class Runner:  # what the tools pass: runner.load_checkpoint(strict=...)
        def load_checkpoint(self, filename, strict=False):
            return load_checkpoint(model, filename, strict=strict)

    with pytest.raises(ValueError) as err:
        load_checkpoint_strict(Runner(), str(ckpt), 'my_config.py')
    msg = str(err.value)
    assert 'three_classes.pth' in msg and 'my_config.py' in msg
    assert 'size mismatch for backbone.cls_token' in msg
    assert 'num_classes' in msg


def test_image_id_missing_from_class_label_file(tmp_path):
    labels = {'2007_000032': np.eye(NUM_FG, dtype=np.float32)[0]}
    np.save(tmp_path / 'cls_labels.npy', labels, allow_pickle=True)
    t = TRANSFORMS.build(dict(type='LoadImageLevelLabelFromFile',
                              label_file=str(tmp_path / 'cls_labels.npy'),
                              num_classes=NUM_FG))
    with pytest.raises(KeyError) as err:
        t(dict(img_path='JPEGImages/2011_999999.jpg'))
    msg = str(err.value)
    assert "'2011_999999'" in msg and 'cls_labels.npy' in msg
    assert 'split matches the label file' in msg


def test_package_path_lookup_without_pkg_resources(tmp_path):
    """setuptools >= 82 has no pkg_resources: `mmseg::` bases still load."""
    import subprocess
    import sys
    cfg = tmp_path / 'ext.py'
    cfg.write_text("_base_ = ['mmseg::_base_/default_runtime.py']\n")
    code = ("import sys; sys.modules['pkg_resources'] = None\n"
            "{}from mmengine.config import Config\n"
            f"print(Config.fromfile({str(cfg)!r}).default_scope)")
    repo = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=repo)
    plain = subprocess.run([sys.executable, '-c', code.format('')],
                           capture_output=True, text=True, env=env)
    assert 'pkg_resources' in plain.stderr  # mmengine alone fails
    fixed = subprocess.run(
        [sys.executable, '-c', code.format('import wsss_zoo\n')],
        capture_output=True, text=True, env=env)
    assert fixed.returncode == 0, fixed.stderr[-2000:]
    assert fixed.stdout.strip().endswith('mmseg')


def test_collect_env_reports_versions_and_compiled_ops():
    import subprocess
    import sys

    from wsss_zoo.compat import has_compiled_mmcv_ops
    proc = subprocess.run([sys.executable, '-m', 'wsss_zoo.collect_env'],
                          capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr
    lines = dict(line.split(': ', 1) for line in proc.stdout.splitlines()
                 if ': ' in line)
    for key in ('Python', 'PyTorch', 'CUDA available', 'timm', 'mmengine',
                'mmcv', 'mmsegmentation', 'numpy', 'OpenCV', 'setuptools',
                'wsss_zoo'):
        assert key in lines, key
    assert lines['PyTorch'].startswith(torch.__version__.split('+')[0])
    ops = lines['mmcv compiled ops (mmcv._ext)']
    assert ops.startswith('yes' if has_compiled_mmcv_ops() else 'no')
