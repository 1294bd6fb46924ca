"""Fail early, with the fix, when a dataset folder is missing."""
import os.path as osp

_HINTS = {
    'ADE20KDataset':
    'Download ADEChallengeData2016.zip (http://data.csail.mit.edu/places/'
    'ADEchallenge/ADEChallengeData2016.zip) and unzip it so that '
    '{root}/images/training and {root}/annotations/training exist '
    '(mmseg docs: user_guides/2_dataset_prepare.md#ade20k), or set '
    '--cfg-options {key}.dataset.data_root=/path/to/ADEChallengeData2016.',
    'PascalVOCDataset':
    'Download VOCtrainval_11-May-2012.tar and SegmentationClassAug, place '
    'them under {root} (JPEGImages, SegmentationClassAug, ImageSets/'
    'Segmentation), see README "Data" and mmseg docs '
    'user_guides/2_dataset_prepare.md#pascal-voc, or set --cfg-options '
    '{key}.dataset.data_root=/path/to/VOC2012.',
    'COCOStuffDataset':
    'Prepare COCO-Stuff 164k as in mmseg docs user_guides/'
    '2_dataset_prepare.md#coco-stuff, or set --cfg-options '
    '{key}.dataset.data_root=PATH.',
    'SynthShapesDataset':
    'Generate it with: python tools/make_synthetic_dataset.py --out {root}',
}
_DEFAULT_HINT = ('Prepare the dataset there or point the config at it with '
                 '--cfg-options {key}.dataset.data_root=PATH.')


def _iter_datasets(dataset_cfg):
    """Yield the leaf dataset configs of wrappers (Concat, Repeat, ...)."""
    if dataset_cfg is None:
        return
    if 'datasets' in dataset_cfg:
        for sub in dataset_cfg['datasets']:
            yield from _iter_datasets(sub)
    elif 'dataset' in dataset_cfg:
        yield from _iter_datasets(dataset_cfg['dataset'])
    else:
        yield dataset_cfg


def check_data_roots(cfg, loaders=('train_dataloader', 'val_dataloader',
                                   'test_dataloader')):
    """Raise ``FileNotFoundError`` naming the path and how to prepare it."""
    for key in loaders:
        loader = cfg.get(key)
        if not loader:
            continue
        for ds in _iter_datasets(loader.get('dataset')):
            root = ds.get('data_root', '')
            paths = [root] if root else []
            prefix = ds.get('data_prefix') or {}
            img_dir = prefix.get('img_path')
            if img_dir:
                paths.append(osp.join(root, img_dir))
            for path in paths:
                if path and not osp.isdir(path):
                    hint = _HINTS.get(ds.get('type'), _DEFAULT_HINT)
                    raise FileNotFoundError(
                        f'{key}: dataset {ds.get("type")} not found: '
                        f'{osp.abspath(path)} does not exist. ' +
                        hint.format(root=root or path, key=key))
