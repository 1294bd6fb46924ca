"""--cfg-options pseudo_label_dir=DIR reaches the stage-2 dataset."""
import os.path as osp
from pathlib import Path

import pytest
from mmengine.config import Config

from wsss_zoo.utils.config import merge_cfg_options

REPO = Path(__file__).resolve().parents[1]
PSEUDO_CONFIGS = [
    'configs/depict/depict-sa_vit-t8_1xb8-2k_synthshapes-pseudo-96x96.py',
    'configs/depict/depict-sa_vit-s16_1xb8-20k_voc12aug-pseudo-512x512.py',
]


@pytest.mark.parametrize('config', PSEUDO_CONFIGS)
def test_pseudo_label_dir_option(config, tmp_path):
    cfg = Config.fromfile(str(REPO / config))
    before = cfg.train_dataloader.dataset.data_prefix.seg_map_path
    assert before == cfg.pseudo_label_dir  # the config's default
    merge_cfg_options(cfg, {'pseudo_label_dir': str(tmp_path / 'pl'),
                            'train_dataloader.batch_size': 3})
    prefix = cfg.train_dataloader.dataset.data_prefix
    assert prefix.seg_map_path == str(tmp_path / 'pl')
    assert osp.isabs(prefix.seg_map_path)
    assert cfg.train_dataloader.batch_size == 3
    # validation still uses the real masks
    assert cfg.val_dataloader.dataset.data_prefix.seg_map_path != \
        prefix.seg_map_path


def test_pseudo_label_dir_on_a_config_without_it():
    cfg = Config.fromfile(str(
        REPO / 'configs/depict/depict-sa_vit-t8_1xb8-2k_synthshapes-96x96.py'))
    with pytest.raises(KeyError, match='does not train on pseudo labels'):
        merge_cfg_options(cfg, {'pseudo_label_dir': 'x'})
