"""Write per-class CAM heat-map overlays (PNG) for given images.

    python tools/visualize_cams.py CONFIG CHECKPOINT IMG [IMG ...]
        --out-dir DIR [--classes all|pred] [--bg-thresh T] [--device cpu]

For every image and every class the model predicts (logit > 0; or all
classes with ``--classes all``) it writes ``DIR/<id>_<class>.png``: the
image blended with a JET heat map of the normalised CAM, and
``DIR/<id>_mask.png``: the image blended with the thresholded CAM mask.
IMG may be a folder (all .jpg/.png inside).
"""
import argparse
import os
import os.path as osp
import sys

try:
    import wsss_zoo  # noqa: F401
except ImportError:  # running from a source checkout without install
    sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
    import wsss_zoo  # noqa: F401

import cv2
import numpy as np
import torch
from mmengine.config import Config
from mmengine.dataset import Compose
from mmengine.registry import init_default_scope
from mmengine.runner import load_checkpoint

from mmseg.registry import MODELS

_LABEL_TRANSFORMS = ('LoadAnnotations', 'AddImageLevelLabel',
                     'LoadImageLevelLabelFromFile')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='CAM overlays')
    parser.add_argument('config')
    parser.add_argument('checkpoint')
    parser.add_argument('images', nargs='+', help='image files or folders')
    parser.add_argument('--out-dir', required=True)
    parser.add_argument('--classes', choices=['pred', 'all'], default='pred')
    parser.add_argument('--bg-thresh', type=float, default=None)
    parser.add_argument('--alpha', type=float, default=0.5)
    parser.add_argument('--device', default='cpu')
    return parser.parse_args(argv)


def image_list(items):
    files = []
    for item in items:
        if osp.isdir(item):
            files += sorted(
                osp.join(item, f) for f in os.listdir(item)
                if f.lower().endswith(('.jpg', '.jpeg', '.png')))
        elif osp.isfile(item):
            files.append(item)
        else:
            raise FileNotFoundError(f'image not found: {osp.abspath(item)}')
    return files


def inference_pipeline(cfg):
    """The test pipeline without label loading (images only)."""
    steps = []
    for step in cfg.test_pipeline:
        if step['type'] in _LABEL_TRANSFORMS:
            continue
        if step['type'] == 'PackCAMInputs':
            step = dict(step, type='PackSegInputs')
        steps.append(step)
    return Compose(steps)


def build_model(cfg, checkpoint, device, label_source, bg_thresh):
    model_cfg = cfg.model.copy()
    test_cfg = dict(model_cfg.get('test_cfg') or {})
    test_cfg['label_source'] = label_source
    if bg_thresh is not None:
        test_cfg['bg_thresh'] = bg_thresh
    model_cfg.test_cfg = test_cfg
    init_default_scope(cfg.get('default_scope', 'mmseg'))
    model = MODELS.build(model_cfg)
    load_checkpoint(model, checkpoint, map_location='cpu')
    return model.to(device).eval()


def overlay(image_bgr, heat, alpha):
    heat_u8 = np.clip(heat * 255, 0, 255).astype(np.uint8)
    colour = cv2.applyColorMap(heat_u8, cv2.COLORMAP_JET)
    return cv2.addWeighted(image_bgr, 1 - alpha, colour, alpha, 0)


def main(argv=None):
    args = parse_args(argv)
    cfg = Config.fromfile(args.config)
    label_source = 'none' if args.classes == 'all' else 'pred'
    model = build_model(cfg, args.checkpoint, args.device, label_source,
                        args.bg_thresh)
    pipeline = inference_pipeline(cfg)
    classes = cfg.get('metainfo', {}).get('classes') or getattr(
        model, 'dataset_meta', None) or None
    palette = None
    os.makedirs(args.out_dir, exist_ok=True)
    written = []
    for path in image_list(args.images):
        data = pipeline(dict(img_path=path))
        batch = dict(inputs=[data['inputs']],
                     data_samples=[data['data_samples']])
        with torch.no_grad():
            sample = model.test_step(batch)[0]
        norm = sample.seg_logits.data.cpu().numpy()
        pred = sample.pred_sem_seg.data[0].cpu().numpy()
        offset = 0 if model.background_index is None else 1
        image = cv2.imread(path, cv2.IMREAD_COLOR)
        image = cv2.resize(image, (norm.shape[2], norm.shape[1]))
        name = osp.splitext(osp.basename(path))[0]
        for k in range(model.num_classes):
            cam = norm[k + offset]
            if cam.max() <= 0:
                continue
            label = classes[k + offset] if classes else str(k)
            out = osp.join(args.out_dir, f'{name}_{label}.png')
            cv2.imwrite(out, overlay(image, cam, args.alpha))
            written.append(out)
        if palette is None:
            rng = np.random.default_rng(0)
            palette = rng.integers(0, 255, (256, 3), dtype=np.uint8)
            palette[0] = 0
        mask_rgb = palette[pred]
        out = osp.join(args.out_dir, f'{name}_mask.png')
        cv2.imwrite(out, cv2.addWeighted(image, 1 - args.alpha, mask_rgb,
                                         args.alpha, 0))
        written.append(out)
    print(f'wrote {len(written)} overlays to {osp.abspath(args.out_dir)}')
    return written


if __name__ == '__main__':
    main()
