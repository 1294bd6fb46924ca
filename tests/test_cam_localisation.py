"""A trained MCTformer-V2's CAM of a class is highest inside that class's
objects (issue 3), trained here from scratch on SynthShapes images with
image-level labels only, with the ingredients of the synthetic config's
recipe (configs/mctformer/mctformer-v2_vit-t8_*_synthshapes*.py) on a smaller
model, in an in-memory loop: random resized crops whose labels are recomputed
from the crop (square crops here), the class-to-patch CAM, no patch-affinity
refinement.

The untrained model of the same seed is the control: the property must come
from training, not from the architecture or the data."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mmengine.registry import init_default_scope

from mmseg.registry import MODELS
from mmseg.structures import SegDataSample
from wsss_zoo.datasets.synthetic import render_image

NUM_FG = 5
SIZE = 96
PATCH = 8


def _images(n, seed):
    imgs, masks = [], []
    for i in range(n):
        img, mask, _ = render_image(np.random.default_rng([seed, i]),
                                    img_size=SIZE)
        imgs.append(img)
        masks.append(mask)
    x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float()
    return x, torch.from_numpy(np.stack(masks).astype(np.int64))


def _labels(masks):
    """(N, 5) multi-hot image-level labels of (N, H, W) masks."""
    return torch.stack([(masks == k + 1).flatten(1).any(1)
                        for k in range(NUM_FG)], dim=1).float()


def _model():
    """Tiny MCTformer-V2 (96 px, patch 8: 12x12 tokens, 3 layers) with the
    synthetic config's CAM: class-to-patch attention, no refinement."""
    init_default_scope('mmseg')
    torch.manual_seed(0)
    return MODELS.build(dict(
        type='CAMSegmentor',
        data_preprocessor=dict(
            type='CAMDataPreProcessor', mean=[127.5] * 3, std=[127.5] * 3,
            bgr_to_rgb=False, size=(SIZE, SIZE),
            test_cfg=dict(size_divisor=PATCH)),
        backbone=dict(
            type='MCTformerV2', img_size=SIZE, patch_size=PATCH,
            embed_dims=96, num_layers=3, num_heads=4, num_classes=NUM_FG,
            drop_path_rate=0.0),
        cam_head=dict(type='MCTHead', num_classes=NUM_FG, in_channels=96,
                      version='v2', cam_mode='mct', cam_layers=3),
        refiners=[],
        test_cfg=dict(bg_thresh=0.4, label_source='gt')))


def _random_resized_crop(x, masks, rng, min_scale=0.25):
    """Square crops of 25-100 % of the area, resized back to SIZE."""
    out_x, out_m = [], []
    for img, mask in zip(x, masks):
        side = int(round(SIZE * np.sqrt(rng.uniform(min_scale, 1.0))))
        y0, x0 = rng.integers(0, SIZE - side + 1, 2)
        crop = img[None, :, y0:y0 + side, x0:x0 + side]
        out_x.append(F.interpolate(crop, size=(SIZE, SIZE), mode='bilinear',
                                   align_corners=False))
        crop_m = mask[None, None, y0:y0 + side, x0:x0 + side].float()
        out_m.append(F.interpolate(crop_m, size=(SIZE, SIZE))[:, 0].long())
    return torch.cat(out_x), torch.cat(out_m)


def _train(model, x, masks, iters=300, batch=16):
    """AdamW from scratch on image-level labels of random resized crops."""
    rng = np.random.default_rng(0)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.05)
    warmup = torch.optim.lr_scheduler.LinearLR(opt, 0.1, total_iters=100)
    model.train()
    for _ in range(iters):
        idx = rng.integers(0, len(x), batch)
        xb, mb = _random_resized_crop(x[idx], masks[idx], rng)
        flip = torch.from_numpy(rng.random(batch) < 0.5)
        xb[flip], mb[flip] = xb[flip].flip(-1), mb[flip].flip(-1)
        samples = []
        for label in _labels(mb):
            s = SegDataSample(metainfo=dict(img_shape=(SIZE, SIZE)))
            s.set_field(label, 'gt_img_label')
            samples.append(s)
        data = model.data_preprocessor(
            dict(inputs=list(xb), data_samples=samples), training=True)
        losses = model.loss(data['inputs'], data['data_samples'])
        loss = sum(v for k, v in losses.items() if k.startswith('loss'))
        opt.zero_grad()
        loss.backward()
        opt.step()
        warmup.step()
    return model.eval()


def _inside_vs_outside(model, x, masks):
    """Per (image, present class): mean normalised CAM inside the class's
    objects and on the background, from ``CAMSegmentor.predict``."""
    samples = []
    for label in _labels(masks):
        s = SegDataSample(metainfo=dict(ori_shape=(SIZE, SIZE),
                                        img_shape=(SIZE, SIZE)))
        s.set_field(label, 'gt_img_label')
        samples.append(s)
    with torch.no_grad():
        data = model.data_preprocessor(
            dict(inputs=list(x), data_samples=samples), training=False)
        out = model.predict(data['inputs'], data['data_samples'])
    inside, outside = [], []
    for res, mask in zip(out, masks):
        cams = res.seg_logits.data  # (1 + C, H, W): bg threshold + CAMs
        for k in range(1, NUM_FG + 1):
            obj = mask == k
            if obj.any():
                inside.append(cams[k][obj].mean().item())
                outside.append(cams[k][mask == 0].mean().item())
    return np.array(inside), np.array(outside)


@pytest.mark.slow
def test_trained_mctformer_v2_cam_is_highest_inside_the_objects():
    x_train, m_train = _images(400, seed=1)
    x_val, m_val = _images(48, seed=2)

    untrained = _model().eval()
    ins0, out0 = _inside_vs_outside(untrained, x_val, m_val)

    model = _train(_model(), x_train, m_train)
    ins, out = _inside_vs_outside(model, x_val, m_val)
    # training makes the class's CAM higher on its objects than on the
    # background for (nearly) every held-out image and present class
    # (measured: 97.5 %, mean inside / outside 4.2) ...
    assert len(ins) >= 60
    assert (ins > out).mean() >= 0.85, (ins - out)
    assert ins.mean() > 2.5 * out.mean(), (ins.mean(), out.mean())
    # ... which the untrained network does not do (measured: 69 %, 1.2)
    assert ins0.mean() < 1.5 * out0.mean(), (ins0.mean(), out0.mean())
