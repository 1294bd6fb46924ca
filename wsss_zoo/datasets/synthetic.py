"""SynthShapes: the built-in, download-free dataset for demos, CI and tests.

Each image shows 1-3 (``min_objects``..``max_objects``) textured objects on
a cluttered background. The five foreground classes differ in silhouette
AND texture; the two colours of an object are drawn per instance from one
colour distribution shared by all classes (and by the background), so
colour carries no class information:

    ========  ===========================  =================================
    class     silhouette                   texture
    ========  ===========================  =================================
    disc      filled circle                horizontal stripes
    square    square, rotated +-20 deg     checkerboard
    triangle  equilateral, rotated +-20    dots on a lattice
    cross     plus sign, rotated +-20      diagonal stripes (/ or \\)
    ring      annulus (background inside)  speckle (random 2x2 blocks)
    ========  ===========================  =================================

Objects are 18-45 % of the image side, placed at random, and may overlap:
the later-drawn object wins in the mask, and an earlier object keeps at
least half of its area (otherwise the new one is re-placed). The
background is a smooth colour gradient with soft blobs, a few thin random
strokes and Gaussian noise. Texture periods scale with ``img_size``.

Files (both mmseg layouts, same ids, the ADE-style files are hard links of
the VOC-style ones where the file system allows)::

    out_dir/
      JPEGImages/<id>.jpg            SegmentationClass/<id>.png
      ImageSets/Segmentation/{train,val,trainval}.txt
      cls_labels.npy                 MCTformer's VOC format: {id (str):
                                     float32 (5,) multi-hot}, foreground
                                     class k (1-based in the mask) at k - 1
      images/{training,validation}/<id>.jpg
      annotations/{training,validation}/<id>.png
      classes.txt  meta.json

Images are JPEG (quality 95, 4:4:4, no optimisation: small files, the
suffix mmseg's VOC datasets expect); masks are palette PNGs of class
indices 0..5 (no ignore pixels). Generation is deterministic: every image
draws from its own ``default_rng([seed, split, index])``, so the same
arguments give byte-identical files on the same machine (same numpy,
Pillow/libjpeg and zlib), whatever the split sizes. ``meta.json`` is
written last and records the arguments (``tools/make_synthetic_dataset.py``
skips a matching, complete dataset).
"""
import colorsys
import json
import os
import os.path as osp
import shutil

import numpy as np
from mmseg.datasets import BaseSegDataset
from mmseg.registry import DATASETS
from PIL import Image

SYNTH_CLASSES = ('background', 'disc', 'square', 'triangle', 'cross', 'ring')
SYNTH_PALETTE = [[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25],
                 [0, 130, 200], [245, 130, 48]]
# foreground class index -> (silhouette, texture)
_LOOKS = {1: ('disc', 'hstripes'), 2: ('square', 'checker'),
          3: ('triangle', 'dots'), 4: ('cross', 'dstripes'),
          5: ('ring', 'speckle')}
_SPLITS = (('train', 'training'), ('val', 'validation'))
_LAYOUT_DIRS = ('JPEGImages', 'SegmentationClass', 'ImageSets', 'images',
                'annotations')
FORMAT_VERSION = 1
JPEG_QUALITY = 95
MAKE_COMMAND = 'python tools/make_synthetic_dataset.py --out {root}'


# ---------------------------------------------------------------- colours
def _random_colour(rng, max_saturation=1.0):
    """One RGB colour (float, 0..255) from the distribution all share."""
    hue, sat, val = rng.random(), rng.uniform(0.25, max_saturation), \
        rng.uniform(0.2, 1.0)
    return np.array(colorsys.hsv_to_rgb(hue, sat, val)) * 255.0


def _luma(rgb):
    return 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]


def _colour_pair(rng, min_contrast=70.0):
    """Two colours whose brightness differs enough to show a texture."""
    for _ in range(100):
        c0, c1 = _random_colour(rng), _random_colour(rng)
        if abs(_luma(c0) - _luma(c1)) >= min_contrast:
            break
    return c0, c1


# ------------------------------------------------------------ silhouettes
def _silhouette(kind, yy, xx, cy, cx, size, angle, hole):
    """Boolean (H, W) mask of one object; ``size`` is its outer diameter."""
    dy, dx = yy - cy, xx - cx
    cos, sin = np.cos(angle), np.sin(angle)
    u, v = cos * dx + sin * dy, -sin * dx + cos * dy  # object frame
    radius = size / 2
    if kind == 'disc':
        return dx**2 + dy**2 <= radius**2
    if kind == 'ring':
        r2 = dx**2 + dy**2
        return (r2 <= radius**2) & (r2 >= (hole * radius)**2)
    if kind == 'square':
        half = 0.42 * size
        return (np.abs(u) <= half) & (np.abs(v) <= half)
    if kind == 'triangle':  # equilateral, apex up, area ~ a square's
        r = 1.25 * radius  # circumradius; inradius r / 2
        inside = v <= r / 2  # base
        for a in (-np.pi / 6, -5 * np.pi / 6):  # the two slanted edges
            inside &= np.cos(a) * u + np.sin(a) * v <= r / 2
        return inside
    if kind == 'cross':
        half, arm = radius, radius / 3
        return (((np.abs(u) <= half) & (np.abs(v) <= arm)) |
                ((np.abs(u) <= arm) & (np.abs(v) <= half)))
    raise ValueError(f'unknown silhouette {kind!r}')


# --------------------------------------------------------------- textures
def _texture(kind, rng, yy, xx, img_size):
    """(H, W) float in {0, 1}: which of the two colours each pixel takes."""
    period = max(3.0, img_size * rng.uniform(0.055, 0.085))
    offset = rng.uniform(0, period)
    if kind == 'hstripes':
        return np.floor((yy + offset) / (period / 2)) % 2
    if kind == 'dstripes':
        diag = (xx + rng.choice([-1.0, 1.0]) * yy) / np.sqrt(2)
        return np.floor((diag + offset) / (period / 2)) % 2
    if kind == 'checker':
        cell = period / 2
        return (np.floor((yy + offset) / cell) +
                np.floor((xx + rng.uniform(0, period)) / cell)) % 2
    if kind == 'dots':
        period *= 1.25  # dots of ~2.5 px survive JPEG at 96 px
        py = (yy + offset) % period - period / 2
        px = (xx + rng.uniform(0, period)) % period - period / 2
        dot = period * rng.uniform(0.25, 0.32)
        return (py**2 + px**2 <= dot**2).astype(np.float64)
    if kind == 'speckle':
        cells = rng.random(((img_size + 1) // 2, ) * 2) < 0.5
        return np.kron(cells, np.ones((2, 2)))[:img_size, :img_size]
    raise ValueError(f'unknown texture {kind!r}')


# ------------------------------------------------------------- background
def _background(rng, yy, xx, img_size):
    """Smooth gradient + soft blobs + thin random strokes, (H, W, 3)."""
    c0, c1 = (_random_colour(rng, 0.7) for _ in range(2))
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * xx + np.sin(angle) * yy) / img_size
    ramp = (ramp - ramp.min()) / max(ramp.max() - ramp.min(), 1e-6)
    img = c0 + ramp[..., None] * (c1 - c0)
    for _ in range(rng.integers(2, 5)):  # soft blobs
        cy, cx = rng.uniform(0, img_size, 2)
        sigma = img_size * rng.uniform(0.08, 0.25)
        alpha = rng.uniform(0.3, 0.7) * np.exp(
            -((yy - cy)**2 + (xx - cx)**2) / (2 * sigma**2))
        img += alpha[..., None] * (_random_colour(rng, 0.7) - img)
    for _ in range(rng.integers(3, 7)):  # strokes: short (poly)lines
        y0, x0 = rng.uniform(0, img_size, 2)
        width, colour = rng.uniform(0.7, 1.6), _random_colour(rng)
        for _ in range(rng.integers(1, 3)):
            length = img_size * rng.uniform(0.1, 0.35)
            a = rng.uniform(0, 2 * np.pi)
            y1, x1 = y0 + length * np.sin(a), x0 + length * np.cos(a)
            near = _segment_distance(yy, xx, y0, x0, y1, x1) <= width / 2
            img[near] = colour
            y0, x0 = y1, x1
    return img


def _segment_distance(yy, xx, y0, x0, y1, x1):
    dy, dx = y1 - y0, x1 - x0
    t = ((yy - y0) * dy + (xx - x0) * dx) / max(dy * dy + dx * dx, 1e-6)
    t = np.clip(t, 0.0, 1.0)
    return np.hypot(yy - (y0 + t * dy), xx - (x0 + t * dx))


# ------------------------------------------------------------------ image
def render_image(rng, img_size=96, min_objects=1, max_objects=3,
                 first_class=None, max_tries=30):
    """Draw one image and its mask.

    Args:
        rng (np.random.Generator): the image's own generator.
        img_size (int): side S of the square image. Defaults to 96.
        min_objects (int): fewest objects. Defaults to 1.
        max_objects (int): most objects. Defaults to 3.
        first_class (int, optional): class (1..5) of the first object, so
            that a split can cycle through the classes. Defaults to None
            (random).
        max_tries (int): placements tried per object before it is dropped
            (only when overlaps would hide earlier objects). Defaults to 30.

    Returns:
        tuple[np.ndarray, np.ndarray, list[int]]: image (S, S, 3) uint8
        RGB, mask (S, S) uint8 of class indices (0 background, 1..5
        objects) and the classes of the objects drawn, in drawing order.
    """
    yy, xx = np.mgrid[0:img_size, 0:img_size].astype(np.float64) + 0.5
    img = _background(rng, yy, xx, img_size)
    mask = np.zeros((img_size, img_size), np.uint8)
    objects = []  # (visible silhouette, full area) of the objects so far
    labels = []
    num_fg = len(SYNTH_CLASSES) - 1
    for k in range(rng.integers(min_objects, max_objects + 1)):
        label = first_class if (k == 0 and first_class) else \
            int(rng.integers(1, num_fg + 1))
        shape, texture = _LOOKS[label]
        for _ in range(max_tries):
            size = img_size * rng.uniform(0.18, 0.45)
            cy, cx = rng.uniform(size / 2, img_size - size / 2, 2)
            sil = _silhouette(shape, yy, xx, cy, cx, size,
                              np.deg2rad(rng.uniform(-20, 20)),
                              rng.uniform(0.45, 0.6))
            if all((seen & ~sil).sum() >= area / 2 for seen, area in objects):
                break
        else:
            continue
        for i, (seen, area) in enumerate(objects):
            objects[i] = (seen & ~sil, area)
        objects.append((sil, sil.sum()))
        c0, c1 = _colour_pair(rng)
        t = _texture(texture, rng, yy, xx, img_size)[..., None]
        img[sil] = (c0 + t * (c1 - c0))[sil]
        mask[sil] = label
        labels.append(label)
    img += rng.normal(0.0, 4.0, img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), mask, labels


# ------------------------------------------------------------------ files
def _save_mask(mask, path):
    png = Image.fromarray(mask)  # uint8 (H, W) -> 'L'; putpalette -> 'P'
    png.putpalette(np.asarray(SYNTH_PALETTE, np.uint8).ravel().tolist())
    png.save(path, optimize=False)


def _link_or_copy(src, dst):
    if osp.lexists(dst):
        os.remove(dst)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _write_lines(path, lines):
    with open(path, 'w') as f:
        f.write(''.join(f'{line}\n' for line in lines))


def make_synthshapes(out_dir, num_train=2000, num_val=120, img_size=96,
                     seed=0, min_objects=1, max_objects=3):
    """Generate SynthShapes under ``out_dir`` (both layouts, see module).

    Args:
        out_dir (str): dataset root; created if missing. A previous
            SynthShapes there (``meta.json`` present) is replaced.
        num_train (int): training images. Defaults to 2000 (with 600 the
            demo's tiny ViT overfits in 2k iterations: val mAP ~0.80
            instead of ~0.90).
        num_val (int): validation images. Defaults to 120.
        img_size (int): image side in pixels. Defaults to 96.
        seed (int): base seed. Defaults to 0.
        min_objects (int): fewest objects per image. Defaults to 1.
        max_objects (int): most objects per image. Defaults to 3.

    Returns:
        dict: summary: images, mean objects per image and images per class
        for each split (also stored in ``meta.json``).
    """
    if num_train < 1 or num_val < 1:
        raise ValueError('make_synthshapes: num_train and num_val must be '
                         f'>= 1, got {num_train} and {num_val}')
    if not 1 <= min_objects <= max_objects:
        raise ValueError('make_synthshapes: need 1 <= min_objects <= '
                         f'max_objects, got {min_objects}, {max_objects}')
    if img_size < 32:
        raise ValueError(f'make_synthshapes: img_size must be >= 32, got '
                         f'{img_size}')
    args = dict(num_train=num_train, num_val=num_val, img_size=img_size,
                seed=seed, min_objects=min_objects, max_objects=max_objects)
    meta_path = osp.join(out_dir, 'meta.json')
    if osp.isfile(meta_path):  # ours: start afresh (no stale files)
        os.remove(meta_path)  # written last: marks a complete dataset
        for name in _LAYOUT_DIRS:
            shutil.rmtree(osp.join(out_dir, name), ignore_errors=True)
    voc_img, voc_seg = (osp.join(out_dir, d)
                        for d in ('JPEGImages', 'SegmentationClass'))
    sets_dir = osp.join(out_dir, 'ImageSets', 'Segmentation')
    for d in (voc_img, voc_seg, sets_dir):
        os.makedirs(d, exist_ok=True)
    names = SYNTH_CLASSES[1:]
    cls_labels, summary, all_ids = {}, {}, []
    for split_index, (split, ade_split) in enumerate(_SPLITS):
        ade_img = osp.join(out_dir, 'images', ade_split)
        ade_seg = osp.join(out_dir, 'annotations', ade_split)
        os.makedirs(ade_img, exist_ok=True)
        os.makedirs(ade_seg, exist_ok=True)
        count = num_train if split == 'train' else num_val
        ids, objects = [], 0
        per_class = dict.fromkeys(names, 0)
        for i in range(count):
            rng = np.random.default_rng([seed, split_index, i])
            img, mask, labels = render_image(
                rng, img_size, min_objects, max_objects,
                first_class=1 + (i + split_index) % len(names))
            image_id = f'{split}_{i:05d}'
            jpg = osp.join(voc_img, image_id + '.jpg')
            png = osp.join(voc_seg, image_id + '.png')
            Image.fromarray(img).save(jpg, quality=JPEG_QUALITY,
                                      subsampling=0, optimize=False)
            _save_mask(mask, png)
            _link_or_copy(jpg, osp.join(ade_img, image_id + '.jpg'))
            _link_or_copy(png, osp.join(ade_seg, image_id + '.png'))
            present = np.zeros(len(names), np.float32)
            present[np.unique(mask)[1:] - 1] = 1.0  # drop background (0)
            cls_labels[image_id] = present
            for k in np.flatnonzero(present):
                per_class[names[k]] += 1
            objects += len(labels)
            ids.append(image_id)
        _write_lines(osp.join(sets_dir, f'{split}.txt'), ids)
        all_ids += ids
        summary[split] = dict(images=count,
                              objects_per_image=round(objects / count, 3),
                              images_per_class=per_class)
    _write_lines(osp.join(sets_dir, 'trainval.txt'), all_ids)
    np.save(osp.join(out_dir, 'cls_labels.npy'), cls_labels)
    _write_lines(osp.join(out_dir, 'classes.txt'), SYNTH_CLASSES)
    meta = dict(dataset='SynthShapes', format_version=FORMAT_VERSION,
                args=args, classes=list(SYNTH_CLASSES), summary=summary)
    with open(meta_path, 'w') as f:
        json.dump(meta, f, indent=2)
        f.write('\n')
    return summary


def read_meta(out_dir):
    """The ``meta.json`` of a generated SynthShapes root, or None."""
    path = osp.join(out_dir, 'meta.json')
    if not osp.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


# ---------------------------------------------------------------- dataset
@DATASETS.register_module()
class SynthShapesDataset(BaseSegDataset):
    """SynthShapes in either layout (see :func:`make_synthshapes`).

    VOC style: ``ann_file='ImageSets/Segmentation/train.txt'``,
    ``data_prefix=dict(img_path='JPEGImages',
    seg_map_path='SegmentationClass')``. ADE style:
    ``data_prefix=dict(img_path='images/training',
    seg_map_path='annotations/training')``.

    Args:
        img_suffix (str): image suffix. Defaults to '.jpg'.
        seg_map_suffix (str): mask suffix. Defaults to '.png'.
        reduce_zero_label (bool): map background to 255. Defaults to False.
        **kwargs: the rest of ``BaseSegDataset`` (``data_root``,
            ``data_prefix``, ``ann_file``, ``pipeline``, ...).

    Raises:
        FileNotFoundError: when ``data_root``, the image folder or the split
            file is missing; the message gives the generation command.
    """
    METAINFO = dict(classes=SYNTH_CLASSES, palette=SYNTH_PALETTE)

    def __init__(self, img_suffix='.jpg', seg_map_suffix='.png',
                 reduce_zero_label=False, **kwargs):
        super().__init__(img_suffix=img_suffix, seg_map_suffix=seg_map_suffix,
                         reduce_zero_label=reduce_zero_label, **kwargs)

    def load_data_list(self):
        img_dir = self.data_prefix.get('img_path') or ''
        root = self.data_root or _guess_root(img_dir)
        paths = [p for p in (self.data_root, img_dir) if p]
        for path in paths:
            if not osp.isdir(path):
                self._raise_missing(path, root)
        if self.ann_file and not osp.exists(self.ann_file):
            self._raise_missing(self.ann_file, root)
        return super().load_data_list()

    @staticmethod
    def _raise_missing(path, root):
        raise FileNotFoundError(
            f'SynthShapesDataset: {osp.abspath(path)} does not exist. '
            'Generate the dataset with: ' +
            MAKE_COMMAND.format(root=osp.abspath(root)))


def _guess_root(img_dir):
    """Dataset root of an image folder given without ``data_root``."""
    parent = osp.dirname(osp.normpath(img_dir))
    if osp.basename(parent) == 'images':  # images/training
        return osp.dirname(parent)
    return parent  # JPEGImages
