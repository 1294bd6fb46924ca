"""Image-level labels for weakly-supervised segmentation (stage 1).

An image-level label is a float32 multi-hot vector over the *CAM classes*,
shape (C,). With a background class (``background_index=0``: VOC, COCO,
SynthShapes) CAM class ``k`` is segmentation class ``k + 1``; with
``background_index=None`` (e.g. ADE20K after ``reduce_zero_label``) the CAM
classes are the segmentation classes. ``ignore_index`` (255) is never a class.

Two transforms put it in ``results['img_label']`` (np.float32, (C,)):

- :class:`AddImageLevelLabel` reads the classes present in the (augmented)
  mask ``gt_seg_map``; the mask itself never reaches the loss.
- :class:`LoadImageLevelLabelFromFile` looks the image up in a class-label
  file, e.g. the ``voc12/cls_labels.npy`` of MCTformer / PSA / IRN.

:class:`PackCAMInputs` packs it as the data field ``gt_img_label`` (float
tensor (C,)) of the ``SegDataSample``.

:class:`LoadImageFromFile` (registered under mmcv's name in the mmseg
scope, so every config gets it) is mmcv's loader with a clear error for
empty, corrupt or truncated image files.
"""
import io
import json
import os.path as osp
import pickle
from importlib import import_module
from typing import Dict, Optional, Sequence, Tuple

import mmcv
import numpy as np
import torch
from mmcv.transforms import BaseTransform
from mmcv.transforms import LoadImageFromFile as _MMCVLoadImageFromFile
from mmengine import fileio
from mmengine.logging import print_log

from mmseg.datasets.transforms import PackSegInputs
from mmseg.registry import TRANSFORMS


def _image_id(path: str) -> str:
    """``'.../JPEGImages/2007_000032.jpg'`` -> ``'2007_000032'``."""
    return osp.splitext(osp.basename(path))[0]


# ---------------------------------------------------------------------------
# images

def _strict_decode_fails(data: bytes) -> Optional[str]:
    """Decode fully with Pillow (truncated data raises); the error or None."""
    from PIL import Image
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
    except Exception as e:  # noqa: BLE001 (any decoder error is the answer)
        return f'{type(e).__name__}: {e}'
    return None


def broken_image_reason(data: bytes) -> Optional[str]:
    """Why ``data`` is not a complete image file, or None if it looks whole.

    Checks what decoders may silently accept: an empty file, a JPEG without
    its end-of-image marker, a PNG without its ``IEND`` chunk (some OpenCV
    builds decode such truncated files and fill the missing rows with
    grey). A file that fails the cheap check is decoded fully with Pillow
    before it is declared broken (a JPEG may carry bytes after its end).
    """
    if not data:
        return 'the file is empty'
    if data[:3] == b'\xff\xd8\xff' and b'\xff\xd9' not in data[-64:]:
        error = _strict_decode_fails(data)
        if error:
            return f'truncated JPEG (no end-of-image marker; {error})'
    if data[:8] == b'\x89PNG\r\n\x1a\n' and b'IEND' not in data[-64:]:
        error = _strict_decode_fails(data)
        if error:
            return f'truncated PNG (no IEND chunk; {error})'
    return None


@TRANSFORMS.register_module(name='LoadImageFromFile')
class LoadImageFromFile(_MMCVLoadImageFromFile):
    """mmcv's ``LoadImageFromFile``, failing clearly on a broken file.

    Registered as ``LoadImageFromFile`` in the mmseg scope (the scope of
    every wsss_zoo config), so ``dict(type='LoadImageFromFile')`` uses it;
    ``type='mmcv.LoadImageFromFile'`` still reaches mmcv's own. Decoding is
    unchanged (``mmcv.imfrombytes``, default cv2 backend, ``color_type=
    'color'``), which converts every readable image to 8-bit 3-channel BGR:

    - grayscale (``L``): the gray value is repeated in the 3 channels;
    - RGBA / LA: the alpha channel is dropped (not composited);
    - 16-bit PNG / TIFF: cv2 keeps the high byte (``value >> 8``); Pillow
      (``imdecode_backend='pillow'``) clips values above 255 instead, so
      keep the default backend for 16-bit data.

    An empty, corrupt or truncated file raises ``ValueError`` naming the
    file and the fix instead of mmcv's bare assertion (or, with some
    OpenCV builds, a silently grey-filled image). ``ignore_empty=True``
    returns None as in mmcv.

    Required keys: ``img_path``. Added keys: ``img`` (H, W, 3) uint8
    (float32 with ``to_float32``), ``img_shape``, ``ori_shape``.
    """

    def _read_bytes(self, filename: str) -> bytes:
        if self.file_client_args is not None:
            client = fileio.FileClient.infer_client(self.file_client_args,
                                                    filename)
            return client.get(filename)
        return fileio.get(filename, backend_args=self.backend_args)

    def transform(self, results: dict) -> Optional[dict]:
        filename = results['img_path']
        try:
            data = self._read_bytes(filename)
        except FileNotFoundError:
            if self.ignore_empty:
                return None
            raise FileNotFoundError(
                f'image {filename} does not exist; the dataset lists it '
                f'(id {_image_id(filename)!r}): restore the file or remove '
                'the id from the split file / image folder.') from None
        reason = broken_image_reason(data)
        img = None
        if reason is None:
            try:
                img = mmcv.imfrombytes(
                    data, flag=self.color_type, backend=self.imdecode_backend)
            except Exception as e:  # noqa: BLE001 (reported below)
                reason = f'{type(e).__name__}: {e}'
            if img is None and reason is None:
                reason = 'the decoder cannot read it (no image, or corrupt)'
        if reason is not None:
            if self.ignore_empty:
                return None
            raise ValueError(
                f'cannot read image {filename}: {reason}. The file is broken '
                '(e.g. an interrupted download, copy or extraction): restore '
                f'it from the original archive, or remove its id '
                f'{_image_id(filename)!r} from the split file.')
        if self.to_float32:
            img = img.astype(np.float32)
        results['img'] = img
        results['img_shape'] = img.shape[:2]
        results['ori_shape'] = img.shape[:2]
        return results


@TRANSFORMS.register_module()
class AddImageLevelLabel(BaseTransform):
    """Derive the image-level label from the classes present in the mask.

    Put it after ``LoadAnnotations`` (so ``reduce_zero_label`` is already
    applied) and after the geometric augmentation, so that a crop that loses
    an object also loses its label.

    Required keys: ``gt_seg_map`` (H, W) int. Added keys: ``img_label``
    (np.float32, (C,)), C = ``num_classes - 1`` with a background class,
    ``num_classes`` without.

    Args:
        num_classes (int): number of **segmentation** classes, background
            included (``len(dataset.metainfo['classes'])``: 21 for VOC,
            150 for ADE20K with ``reduce_zero_label=True``).
        background_index (int | None): segmentation index of the
            background, which is not a CAM class. None when every
            segmentation class is a CAM class. Default: 0.
        ignore_index (int): mask value of ignored pixels. Default: 255.
    """

    def __init__(self,
                 num_classes: int,
                 background_index: Optional[int] = 0,
                 ignore_index: int = 255):
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError('AddImageLevelLabel: num_classes must be a '
                             f'positive int, got {num_classes!r}')
        if background_index is not None and not (
                0 <= background_index < num_classes):
            raise ValueError(
                'AddImageLevelLabel: background_index must be None or in '
                f'[0, {num_classes - 1}], got {background_index!r}')
        self.num_classes = num_classes
        self.background_index = background_index
        self.ignore_index = ignore_index
        self.num_cam_classes = num_classes - (background_index is not None)

    def transform(self, results: dict) -> dict:
        if 'gt_seg_map' not in results:
            raise KeyError(
                "AddImageLevelLabel needs 'gt_seg_map': put "
                "dict(type='LoadAnnotations') before it, or use "
                'LoadImageLevelLabelFromFile for images without masks.')
        values = np.unique(results['gt_seg_map'])
        values = values[values != self.ignore_index].astype(np.int64)
        bad = values[(values < 0) | (values >= self.num_classes)]
        if bad.size:
            name = results.get('seg_map_path', results.get('img_path', '?'))
            raise ValueError(
                f'AddImageLevelLabel: mask of {name} has values '
                f'{bad.tolist()} outside [0, {self.num_classes - 1}] (and not '
                f'ignore_index={self.ignore_index}). Check num_classes='
                f'{self.num_classes} (segmentation classes, background '
                'included) and reduce_zero_label of LoadAnnotations / the '
                'dataset.')
        bg = self.background_index
        if bg is not None:
            values = values[values != bg]
            values = values - (values > bg)  # CAM classes skip background
        label = np.zeros(self.num_cam_classes, dtype=np.float32)
        label[values] = 1.0
        results['img_label'] = label
        return results

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(num_classes={self.num_classes}, '
                f'background_index={self.background_index}, '
                f'ignore_index={self.ignore_index})')


# ---------------------------------------------------------------------------
# label files

def _numpy_core(module: str):
    """``numpy._core.<module>`` (numpy 2) or ``numpy.core.<module>`` (1.x)."""
    try:
        return import_module(f'numpy._core.{module}')
    except ImportError:  # numpy < 2
        return import_module(f'numpy.core.{module}')


def _safe_reconstruct(subtype, shape, dtype):
    if subtype is not np.ndarray:
        raise pickle.UnpicklingError(
            f'refusing to rebuild an array of type {subtype!r}')
    return _numpy_core('multiarray')._reconstruct(subtype, shape, dtype)


def _latin1_encode(obj, encoding='utf-8', errors='strict'):
    # protocol-2 pickles (numpy under python 2 / np.save) store bytes as
    # _codecs.encode(str, 'latin1'); no other codec is needed
    if encoding not in ('latin1', 'latin-1'):
        raise pickle.UnpicklingError(
            f'refusing _codecs.encode with encoding {encoding!r}')
    return obj.encode(encoding, errors)


def _allowed_globals() -> Dict[Tuple[str, str], object]:
    multiarray = _numpy_core('multiarray')
    numeric = _numpy_core('numeric')
    allowed = {('numpy', 'ndarray'): np.ndarray,
               ('numpy', 'dtype'): np.dtype,
               ('_codecs', 'encode'): _latin1_encode}
    for core in ('numpy.core', 'numpy._core'):
        allowed[(f'{core}.multiarray', '_reconstruct')] = _safe_reconstruct
        allowed[(f'{core}.multiarray', 'scalar')] = multiarray.scalar
        allowed[(f'{core}.numeric', '_frombuffer')] = numeric._frombuffer
    return allowed


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler for numpy arrays in builtin containers, nothing else.

    ``np.load(allow_pickle=True)`` runs whatever a pickle asks for (e.g.
    ``os.system``); this one resolves only numpy's array/dtype/scalar
    rebuilders and refuses every other global.
    """

    _allowed = None

    def find_class(self, module: str, name: str):
        if _ArrayUnpickler._allowed is None:
            _ArrayUnpickler._allowed = _allowed_globals()
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f'refusing to load {module}.{name}: a label file may only '
                'contain numpy arrays in dicts/lists') from None


def load_npy_safely(path: str):
    """Read a ``.npy`` file; object arrays go through :class:`_ArrayUnpickler`.

    Returns the array; for a pickled 0-d object array (``np.save`` of a dict)
    returns the stored object (``.item()``).
    """
    with open(path, 'rb') as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f'{path}: unsupported .npy version {version}')
        if not dtype.hasobject:
            f.seek(0)
            return np.load(f, allow_pickle=False)
        try:
            array = _ArrayUnpickler(f).load()
        except pickle.UnpicklingError as e:
            raise ValueError(f'{path}: unsafe or corrupt label file: {e}') \
                from None
    if not isinstance(array, np.ndarray) or array.shape != tuple(shape):
        raise ValueError(f'{path}: the pickled content does not match the '
                         f'.npy header (shape {shape})')
    return array.item() if array.shape == () else array


def _read_label_file(path: str,
                     num_classes: Optional[int]) -> Dict[str, np.ndarray]:
    """{image id: multi-hot vector} from a ``.npy``, ``.json`` or ``.txt``."""
    ext = osp.splitext(path)[1].lower()
    if ext == '.npy':
        labels = load_npy_safely(path)
    elif ext == '.json':
        with open(path) as f:
            labels = json.load(f)
    elif ext == '.txt':
        if num_classes is None:
            raise ValueError(f'{path}: a .txt label file lists class indices, '
                             'so num_classes must be given')
        labels = {}
        with open(path) as f:
            for line in f:
                fields = line.split()
                if fields:
                    vec = np.zeros(num_classes, dtype=np.float32)
                    vec[[int(k) for k in fields[1:]]] = 1.0
                    labels[fields[0]] = vec
    else:
        raise ValueError(f'{path}: label files must be .npy (MCTformer '
                         "cls_labels.npy), .json or .txt, got '{ext}'")
    if not isinstance(labels, dict):
        raise ValueError(f'{path}: expected a dict {{image id: multi-hot '
                         f'vector}}, got {type(labels).__name__}')
    return {str(k): np.asarray(v, dtype=np.float32) for k, v in labels.items()}


_LABEL_CACHE: Dict[tuple, Tuple[Dict[str, np.ndarray], int]] = {}


def load_label_file(path: str,
                    num_classes: Optional[int] = None
                    ) -> Dict[str, np.ndarray]:
    """Load (once per process and file version) a class-label file.

    Args:
        path (str): ``.npy`` (pickled dict, MCTformer's ``cls_labels.npy``),
            ``.json`` (``{id: [0/1, ...]}``) or ``.txt`` (one line per image:
            ``<id> <cam class index> ...``).
        num_classes (int, optional): expected vector length C; required for
            ``.txt`` files.

    Returns:
        dict[str, np.ndarray]: image id -> float32 (C,) multi-hot. Shared by
        all callers: do not modify it.
    """
    if not osp.isfile(path):
        raise FileNotFoundError(
            f'class-label file {path!r} not found (cwd {osp.abspath(".")}); '
            'for VOC copy voc12/cls_labels.npy of the MCTformer repository '
            'to data/voc12/, or derive labels from masks with '
            'AddImageLevelLabel.')
    is_txt = osp.splitext(path)[1].lower() == '.txt'
    key = (osp.abspath(path), osp.getmtime(path), osp.getsize(path),
           num_classes if is_txt else None)
    if key not in _LABEL_CACHE:
        labels = _read_label_file(path, num_classes)
        shapes = {v.shape for v in labels.values()}
        if len(shapes) > 1 or any(len(s) != 1 for s in shapes):
            raise ValueError(f'{path}: label vectors must all be 1-D of one '
                             f'length, got shapes {sorted(shapes)}')
        length = shapes.pop()[0] if shapes else -1
        _LABEL_CACHE[key] = labels, length
        print_log(f'loaded {len(labels)} image-level labels ({length} '
                  f'classes) from {path}', logger='current')
    labels, length = _LABEL_CACHE[key]
    if num_classes is not None and labels and length != num_classes:
        raise ValueError(
            f'{path}: label vectors have {length} classes but '
            f'num_classes={num_classes}; num_classes of '
            'LoadImageLevelLabelFromFile counts CAM classes (background '
            'excluded: 20 for VOC, 80 for COCO).')
    return labels


@TRANSFORMS.register_module()
class LoadImageLevelLabelFromFile(BaseTransform):
    """Look the image-level label up in a class-label file.

    The file is MCTformer's (and PSA's / IRN's) ``cls_labels.npy``: a
    pickled dict ``{image id: float32 (C,) multi-hot over the foreground
    classes}`` (VOC: 12,031 ids of train_aug + val, C = 20). It is read with
    a restricted unpickler (numpy arrays and builtin containers only; a file
    asking for anything else is refused) and once per process. ``.json``
    (``{id: [0/1, ...]}``) and ``.txt`` (``<id> <class index> ...`` per line)
    files work too.

    The image id is the basename of ``img_path`` without extension; a file
    keyed with the extension (e.g. ``'COCO_train2014_....jpg'``) also works.

    Required keys: ``img_path``. Added keys: ``img_label`` (np.float32, (C,)).

    Args:
        label_file (str): path of the class-label file.
        num_classes (int, optional): number of **CAM** classes C, i.e. the
            length of the label vectors (background excluded: 20 for VOC,
            80 for COCO). Checked against the file when given; required for
            ``.txt`` files. Default: None.
    """

    def __init__(self, label_file: str, num_classes: Optional[int] = None):
        self.label_file = label_file
        self.num_classes = num_classes
        self._labels = load_label_file(label_file, num_classes)

    @property
    def labels(self) -> Dict[str, np.ndarray]:
        if self._labels is None:  # after unpickling in a spawned worker
            self._labels = load_label_file(self.label_file, self.num_classes)
        return self._labels

    def __getstate__(self):
        state = self.__dict__.copy()
        state['_labels'] = None  # workers reload from the file (cached)
        return state

    def transform(self, results: dict) -> dict:
        img_path = results['img_path']
        image_id = _image_id(img_path)
        labels = self.labels
        label = labels.get(image_id)
        if label is None:
            label = labels.get(osp.basename(img_path))
        if label is None:
            raise KeyError(
                f'image id {image_id!r} ({img_path}) is not in the label file '
                f'{self.label_file} ({len(labels)} ids); check that the '
                'dataset split matches the label file, or derive labels from '
                'masks with AddImageLevelLabel.')
        results['img_label'] = label.copy()
        return results

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(label_file={self.label_file!r}, '
                f'num_classes={self.num_classes})')


@TRANSFORMS.register_module()
class PackCAMInputs(PackSegInputs):
    """``PackSegInputs`` plus the image-level label.

    ``results['img_label']`` (C,) becomes the data field ``gt_img_label``
    (float32 tensor (C,)) of the ``SegDataSample``, so
    ``data_sample.gt_img_label`` works and moves to the device with the
    sample. ``gt_sem_seg`` is packed as usual (metrics only).

    Args:
        meta_keys (Sequence[str]): as in ``PackSegInputs``; ``img_label``
            is never stored in the metainfo.
    """

    def __init__(self,
                 meta_keys: Sequence[str] = ('img_path', 'seg_map_path',
                                             'ori_shape', 'img_shape',
                                             'pad_shape', 'scale_factor',
                                             'flip', 'flip_direction',
                                             'reduce_zero_label')):
        super().__init__(
            meta_keys=tuple(k for k in meta_keys if k != 'img_label'))

    def transform(self, results: dict) -> dict:
        if 'img_label' not in results:
            raise KeyError(
                "PackCAMInputs: no 'img_label' in the results; add "
                "dict(type='AddImageLevelLabel', num_classes=...) (labels "
                "from masks) or dict(type='LoadImageLevelLabelFromFile', "
                'label_file=...) to the pipeline before it.')
        packed = super().transform(results)
        label = torch.as_tensor(
            np.asarray(results['img_label'], dtype=np.float32))
        packed['data_samples'].set_field(label, 'gt_img_label')
        return packed
