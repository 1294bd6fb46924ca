"""Config helpers shared by the tools."""
import os.path as osp
from typing import Optional

from mmengine.config import Config


def merge_cfg_options(cfg: Config, options: Optional[dict]) -> Config:
    """``cfg.merge_from_dict(options)`` plus the stage-2 shortcut
    ``pseudo_label_dir=DIR``.

    Python configs resolve variables when they are parsed, so overriding the
    variable ``pseudo_label_dir`` alone would not reach the dataset. When
    ``options`` sets it, the training dataset's masks are read from ``DIR``
    (made absolute, so mmseg does not join it to ``data_root``).
    """
    if not options:
        return cfg
    options = dict(options)
    pseudo = options.pop('pseudo_label_dir', None)
    if options:
        cfg.merge_from_dict(options)
    if pseudo is not None:
        if 'pseudo_label_dir' not in cfg:
            raise KeyError(
                'pseudo_label_dir given in --cfg-options, but this config '
                'does not train on pseudo labels (it has no pseudo_label_dir);'
                ' use a *-pseudo config or set '
                'train_dataloader.dataset.data_prefix.seg_map_path')
        pseudo = osp.abspath(osp.expanduser(str(pseudo)))
        cfg.pseudo_label_dir = pseudo
        dataset = cfg.train_dataloader.dataset
        while 'dataset' in dataset and 'data_prefix' not in dataset:
            dataset = dataset.dataset  # RepeatDataset and other wrappers
        dataset.data_prefix.seg_map_path = pseudo
    return cfg
