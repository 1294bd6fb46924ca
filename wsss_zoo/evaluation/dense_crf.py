"""Dense CRF refinement of pseudo masks (optional; needs ``pydensecrf2``).

WeakTr refines its stage-1 pseudo masks with a fully connected CRF whose
unary comes from the mask itself (``evaluation.py --out-crf``, calling
``tool/imutils.py::crf_inference_label``): the labels of one image are
renumbered ``[background, its classes...]``, each pixel's label gets
probability ``gt_prob`` = 0.7 and the others share the rest, then 10
mean-field iterations with a Gaussian and a bilateral (RGB) kernel, and the
argmax is mapped back to dataset class indices. The two parameter sets of
the original are kept as presets: ``'voc'`` (Gaussian sxy 4, compat 3;
bilateral sxy 83, srgb 5, compat 3) and ``'coco'`` (3 / 3; 50 / 5 / 10).
Written fresh for wsss_zoo on ``pydensecrf``'s API.

``pydensecrf2`` has no wheel: ``pip install -e ".[crf]"`` builds it from
source (about 30 s; needs g++ and the Python headers).
"""
from typing import Optional, Sequence, Union

import numpy as np

_VOC = dict(
    iters=10,
    gt_prob=0.7,
    gaussian_sxy=4,
    gaussian_compat=3,
    bilateral_sxy=83,
    bilateral_srgb=5,
    bilateral_compat=3)
CRF_PRESETS = dict(
    voc=_VOC,
    coco=dict(_VOC, gaussian_sxy=3, bilateral_sxy=50, bilateral_compat=10),
)


def _import_densecrf():
    try:
        import pydensecrf.densecrf as dcrf
        from pydensecrf.utils import unary_from_labels
    except ImportError as err:
        raise ImportError(
            'dense CRF needs the pydensecrf2 package: pip install -e '
            '".[crf]" (it builds from source in about 30 s and needs g++ '
            'and the Python headers), or run without --crf.') from err
    return dcrf, unary_from_labels


def crf_settings(crf: Union[str, dict]) -> dict:
    """Full CRF settings from a preset name or a dict.

    A dict may name a ``preset`` ('voc' by default) and override any of its
    keys (``iters``, ``gt_prob``, ``gaussian_sxy``, ``gaussian_compat``,
    ``bilateral_sxy``, ``bilateral_srgb``, ``bilateral_compat``).

    Raises:
        ValueError: unknown preset or key.
    """
    if isinstance(crf, str):
        crf = dict(preset=crf)
    crf = dict(crf)
    preset = crf.pop('preset', 'voc')
    if preset not in CRF_PRESETS:
        raise ValueError(f'unknown CRF preset {preset!r}: use one of '
                         f'{sorted(CRF_PRESETS)} or a dict of settings')
    settings = dict(CRF_PRESETS[preset])
    unknown = set(crf) - set(settings)
    if unknown:
        raise ValueError(f'unknown CRF settings {sorted(unknown)}; known: '
                         f'{sorted(settings)} and preset')
    settings.update(crf)
    if not 0 < settings['gt_prob'] < 1:
        raise ValueError(f"CRF gt_prob must be in (0, 1), got "
                         f"{settings['gt_prob']}")
    return settings


def crf_refine_mask(image: np.ndarray,
                    mask: np.ndarray,
                    classes: Optional[Sequence[int]] = None,
                    background: int = 0,
                    crf: Union[str, dict] = 'voc') -> np.ndarray:
    """Refine one pseudo mask with a dense CRF on its image.

    Args:
        image (np.ndarray): the image, (H, W, 3) uint8 RGB.
        mask (np.ndarray): (H, W) integer class indices (dataset indices,
            ``background`` for background).
        classes (Sequence[int], optional): the image's classes (dataset
            indices, background excluded), e.g. its image-level label; they
            and the background are the CRF's labels. None: the classes
            present in ``mask``. Labels of ``mask`` outside them are kept
            as labels too.
        background (int): background index. Default: 0.
        crf (str | dict): preset ('voc', 'coco') or settings, see
            :func:`crf_settings`.

    Returns:
        np.ndarray: (H, W) refined mask, same dtype and index space.
    """
    dcrf, unary_from_labels = _import_densecrf()
    settings = crf_settings(crf)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f'CRF image must be (H, W, 3) RGB, got shape '
                         f'{image.shape}')
    if image.shape[:2] != mask.shape:
        raise ValueError(f'CRF image {image.shape[:2]} and mask '
                         f'{mask.shape} differ in size')
    present = [int(v) for v in np.unique(mask) if v != background]
    fg = sorted(set(present) | set(int(c) for c in (classes or [])))
    if not fg:  # only background: nothing to refine
        return mask.copy()
    keys = np.array([background] + fg, dtype=np.int64)  # compact -> dataset
    table = np.zeros(int(keys.max()) + 1, dtype=np.int64)
    table[keys] = np.arange(len(keys))
    compact = table[mask.astype(np.int64)]  # dataset -> compact
    n = len(keys)
    h, w = mask.shape
    d = dcrf.DenseCRF2D(w, h, n)
    d.setUnaryEnergy(
        unary_from_labels(compact, n, gt_prob=settings['gt_prob'],
                          zero_unsure=False))
    d.addPairwiseGaussian(
        sxy=settings['gaussian_sxy'], compat=settings['gaussian_compat'])
    d.addPairwiseBilateral(
        sxy=settings['bilateral_sxy'],
        srgb=settings['bilateral_srgb'],
        rgbim=np.array(image, dtype=np.uint8, order="C"),  # a writable copy
        compat=settings['bilateral_compat'])
    q = np.array(d.inference(settings['iters'])).reshape(n, h, w)
    return keys[q.argmax(0)].astype(mask.dtype)


__all__ = ['CRF_PRESETS', 'crf_settings', 'crf_refine_mask']
