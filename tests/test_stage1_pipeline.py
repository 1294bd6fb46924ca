"""Stage 1 end to end: the loss sees only image-level labels, batched CAMs
equal one-by-one CAMs, and the pseudo-label / visualisation tools run on a tiny dataset."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from mmengine.optim import OptimWrapper
from mmengine.registry import init_default_scope
from mmengine.structures import PixelData
from PIL import Image

from mmseg.registry import MODELS, TRANSFORMS
from mmseg.structures import SegDataSample
from wsss_zoo.datasets.synthetic import render_image

REPO = Path(__file__).resolve().parents[1]
NUM_FG = 5


def _tiny_model(img_size=48, patch=8, dims=64, layers=2, heads=4,
                test_cfg=None, seed=0, **head_kwargs):
    init_default_scope('mmseg')
    torch.manual_seed(seed)
    cfg = dict(
        type='CAMSegmentor',
        data_preprocessor=dict(
            type='CAMDataPreProcessor', mean=[127.5] * 3, std=[127.5] * 3,
            bgr_to_rgb=False, pad_val=0, seg_pad_val=255,
            size=(img_size, img_size), test_cfg=dict(size_divisor=patch)),
        backbone=dict(
            type='MCTformerV2', img_size=img_size, patch_size=patch,
            embed_dims=dims, num_layers=layers, num_heads=heads,
            num_classes=NUM_FG, drop_path_rate=0.0),
        cam_head=dict(type='MCTHead', num_classes=NUM_FG, in_channels=dims,
                      version='v2', cam_layers=layers, **head_kwargs),
        refiners=[dict(type='PatchAffinityRefiner')],
        test_cfg=test_cfg or dict(bg_thresh=0.4, label_source='gt'))
    return MODELS.build(cfg)


def _sample(img, label_vec, mask=None):
    """Model-input pair: uint8 (3, H, W) tensor and a SegDataSample."""
    h, w = img.shape[:2]
    s = SegDataSample(metainfo=dict(ori_shape=(h, w), img_shape=(h, w)))
    s.set_field(torch.as_tensor(label_vec, dtype=torch.float32),
                'gt_img_label')
    if mask is not None:
        s.gt_sem_seg = PixelData(data=torch.as_tensor(mask)[None].long())
    return torch.from_numpy(img).permute(2, 0, 1).contiguous(), s


def _label_vec(mask):
    vec = np.zeros(NUM_FG, np.float32)
    for k in np.unique(mask):
        if 0 < k <= NUM_FG:
            vec[k - 1] = 1
    return vec


def _packed(img, mask):
    """Run the real stage-1 pipeline tail on one image + mask."""
    results = dict(img=img, gt_seg_map=mask, seg_fields=['gt_seg_map'],
                   img_shape=img.shape[:2], ori_shape=img.shape[:2],
                   img_path='x.jpg', seg_map_path='x.png')
    results = TRANSFORMS.build(dict(type='AddImageLevelLabel',
                                    num_classes=NUM_FG + 1))(results)
    return TRANSFORMS.build(dict(type='PackCAMInputs'))(results)


def test_loss_cannot_see_the_mask():
    """Moving / reshaping objects without changing the set of classes leaves
    the loss unchanged; changing the set of classes changes it."""
    rng = np.random.default_rng(0)
    img, mask, _ = render_image(rng, img_size=48, min_objects=2,
                                max_objects=2)
    model = _tiny_model()
    model.train()  # drop-path 0: deterministic
    classes = [k for k in np.unique(mask) if k]

    # same classes, different pixels: a blob of each class elsewhere,
    # and the original mask rolled
    other = np.zeros_like(mask)
    for i, k in enumerate(classes):
        other[5 + 20 * i:15 + 20 * i, 3:40] = k
    variants = [mask, np.roll(mask, 11, axis=1), other]
    losses = []
    for m in variants:
        packed = _packed(img, m)
        data = model.data_preprocessor(
            dict(inputs=[packed['inputs']],
                 data_samples=[packed['data_samples']]), True)
        losses.append({k: v.item() for k, v in model.loss(
            data['inputs'], data['data_samples']).items()})
    assert losses[0] == losses[1] == losses[2]

    # and the mask really is ignored by the loss itself: garbage gt_sem_seg
    packed = _packed(img, mask)
    packed['data_samples'].gt_sem_seg = PixelData(
        data=torch.randint(0, 6, (1, 48, 48)))
    data = model.data_preprocessor(
        dict(inputs=[packed['inputs']],
             data_samples=[packed['data_samples']]), True)
    garbage = {k: v.item() for k, v in model.loss(
        data['inputs'], data['data_samples']).items()}
    assert garbage == losses[0]

    # a different class set changes the image-level label and the loss
    changed = mask.copy()
    changed[changed == classes[0]] = 0
    packed = _packed(img, changed)
    data = model.data_preprocessor(
        dict(inputs=[packed['inputs']],
             data_samples=[packed['data_samples']]), True)
    new = {k: v.item() for k, v in model.loss(
        data['inputs'], data['data_samples']).items()}
    assert new['loss_cls'] != losses[0]['loss_cls']


def _predict(model, imgs, labels):
    pairs = [_sample(i, v) for i, v in zip(imgs, labels)]
    data = dict(inputs=[p[0] for p in pairs],
                data_samples=[p[1] for p in pairs])
    with torch.no_grad():
        return model.test_step(data)


def test_batched_cams_equal_one_by_one_for_mixed_sizes():
    """A test batch of images of different sizes (padded by the data
    preprocessor) gives the masks and CAMs of one-by-one runs."""
    rng = np.random.default_rng(1)
    model = _tiny_model(seed=1).eval()
    sizes = [(40, 56), (48, 48), (40, 56), (33, 47), (64, 40), (48, 48)]
    imgs, labels = [], []
    for h, w in sizes:
        imgs.append(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        labels.append((rng.random(NUM_FG) < 0.5).astype(np.float32))
        labels[-1][rng.integers(NUM_FG)] = 1
    batched = _predict(model, imgs, labels)
    for img, lab, out in zip(imgs, labels, batched):
        single = _predict(model, [img], [lab])[0]
        assert out.pred_sem_seg.data.shape[-2:] == img.shape[:2]
        assert torch.equal(out.pred_sem_seg.data, single.pred_sem_seg.data)
        torch.testing.assert_close(out.seg_logits.data,
                                   single.seg_logits.data,
                                   rtol=1e-5, atol=1e-5)
    # padding would change the CAMs: the equality above is not trivial
    padded = torch.zeros(3, 48, 64, dtype=torch.uint8)
    padded[:, :40, :56] = torch.from_numpy(imgs[0]).permute(2, 0, 1)
    pad_out = _predict(model, [padded.permute(1, 2, 0).numpy()],
                       [labels[0]])[0]
    assert not torch.allclose(pad_out.seg_logits.data[:, :40, :56],
                              batched[0].seg_logits.data, atol=1e-4)


def _batch(rng, n, img_size):
    imgs, masks = [], []
    for _ in range(n):
        img, mask, _ = render_image(rng, img_size=img_size, min_objects=1,
                                    max_objects=2)
        imgs.append(img)
        masks.append(mask)
    return imgs, masks


def _run(args, **kw):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable] + args, cwd=REPO, env=env,
                          capture_output=True, text=True, **kw)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope='module')
def tiny_stage1(tmp_path_factory):
    """A tiny SynthShapes copy and a random-weight MCTformer-V2 checkpoint
    saved the way mmengine saves (meta + state_dict)."""
    root = tmp_path_factory.mktemp('stage1')
    data = root / 'synth'
    _run(['tools/make_synthetic_dataset.py', '--out', str(data),
          '--num-train', '12', '--num-val', '4'])
    from mmengine.config import Config
    cfg_file = REPO / ('configs/mctformer/'
                       'mctformer-v2_vit-t8_1xb16-2k_synthshapes-96x96.py')
    cfg = Config.fromfile(str(cfg_file))
    init_default_scope('mmseg')
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    ckpt = root / 'random.pth'
    torch.save(dict(meta=dict(), state_dict=model.state_dict()), ckpt)
    return dict(root=root, data=data, cfg=cfg_file, ckpt=ckpt)


def _pseudo(tiny, out_dir, batch_size):
    _run(['tools/make_pseudo_labels.py', str(tiny['cfg']), str(tiny['ckpt']),
          '--out-dir', str(out_dir), '--batch-size', str(batch_size),
          '--work-dir', str(out_dir) + '_work', '--cfg-options',
          f'pseudo_label_dataloader.dataset.data_root={tiny["data"]}',
          'pseudo_label_dataloader.num_workers=0'])
    return sorted(out_dir.glob('*.png'))


def test_pseudo_labels_batched_equal_one_by_one(tiny_stage1):
    """make_pseudo_labels.py (multi-scale + flip) writes the same masks with
    batch 4 and batch 1, one palette PNG per training image."""
    root = tiny_stage1['root']
    batched = _pseudo(tiny_stage1, root / 'pl_b4', 4)
    single = _pseudo(tiny_stage1, root / 'pl_b1', 1)
    ids = (tiny_stage1['data'] / 'ImageSets/Segmentation/train.txt'
           ).read_text().split()
    assert [p.stem for p in batched] == sorted(ids)
    assert [p.name for p in single] == [p.name for p in batched]
    for a, b in zip(batched, single):
        ia, ib = Image.open(a), Image.open(b)
        assert ia.mode == 'P' and ia.size == (96, 96)
        assert np.array_equal(np.array(ia), np.array(ib)), a.name


def test_visualize_cams_writes_overlays(tiny_stage1):
    data = tiny_stage1['data']
    ids = (data / 'ImageSets/Segmentation/val.txt').read_text().split()[:2]
    out = tiny_stage1['root'] / 'vis'
    _run(['tools/visualize_cams.py', str(tiny_stage1['cfg']),
          str(tiny_stage1['ckpt'])] +
         [str(data / 'JPEGImages' / f'{i}.jpg') for i in ids] +
         ['--out-dir', str(out)])
    files = sorted(out.rglob('*.png'))
    assert len(files) >= len(ids)
    for f in files:
        arr = np.array(Image.open(f).convert('RGB'))
        assert arr.shape[0] >= 96 and arr.std() > 0
