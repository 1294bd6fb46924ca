"""DEPICT ADE20K configs: parse, parity settings, and a reduced model runs."""
import re
from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmengine.structures import PixelData

from mmseg.registry import MODELS
from mmseg.structures import SegDataSample

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO_ROOT / 'configs' / 'depict').glob('*_ade20k-*.py'))
ENTRY = REPO_ROOT / 'configs' / 'depict_vit_ade20k.py'
BASES = [
    REPO_ROOT / 'configs' / '_base_' / p
    for p in ('datasets/ade20k.py', 'schedules/schedule_160k.py',
              'models/depict_vit-s16.py')
]
NAME = re.compile(r'depict-(sa|ca)_vit-([tsbl])16_8xb1-160k_ade20k-'
                  r'(\d+)x(\d+)\.py')
WIDTH = dict(t=(192, 3, 12), s=(384, 6, 12), b=(768, 12, 12), l=(1024, 16, 24))


def test_all_variants_exist():
    names = {p.name for p in CONFIGS}
    for mode in ('sa', 'ca'):
        for size in 'tsb':
            assert (f'depict-{mode}_vit-{size}16_8xb1-160k_ade20k-512x512.py'
                    in names)
        assert f'depict-{mode}_vit-l16_8xb1-160k_ade20k-640x640.py' in names


@pytest.mark.parametrize('path', BASES, ids=lambda p: p.name)
def test_base_configs_parse(path):
    Config.fromfile(str(path))


@pytest.mark.parametrize('path', CONFIGS + [ENTRY], ids=lambda p: p.name)
def test_config_parses_with_parity_settings(path):
    cfg = Config.fromfile(str(path))
    match = NAME.fullmatch(path.name)
    mode, size, crop = ('sa', 's',
                        512) if match is None else (match.group(1),
                                                    match.group(2),
                                                    int(match.group(3)))
    embed_dims, heads, layers = WIDTH[size]
    bb, head = cfg.model.backbone, cfg.model.decode_head
    assert cfg.custom_imports.imports == ['wsss_zoo']
    assert (bb.type, head.type, head.mode) == ('SegmenterVisionTransformer',
                                               'DEPICTHead', mode)
    assert (bb.embed_dims, bb.num_heads, bb.num_layers) == (embed_dims, heads,
                                                            layers)
    assert tuple(bb.out_indices) == (layers - 1, )
    assert head.in_channels == head.embed_dims == embed_dims
    assert (head.num_layers, head.num_heads, head.num_classes) == (3, 3, 150)
    assert bb.patch_bias and bb.final_norm and bb.with_cls_token
    assert bb.norm_cfg.eps == 1e-5 and bb.interpolate_mode == 'bilinear'
    assert tuple(bb.img_size) == (crop, crop) == tuple(cfg.crop_size)
    assert tuple(cfg.model.data_preprocessor.size) == (crop, crop)
    assert cfg.model.data_preprocessor.mean == [127.5] * 3
    assert cfg.model.data_preprocessor.std == [127.5] * 3
    assert cfg.model.pretrained is None  # local file, never a URL
    crop_step = [
        t for t in cfg.train_dataloader.dataset.pipeline
        if t.type == 'RandomCrop'
    ][0]
    assert tuple(crop_step.crop_size) == (crop, crop)
    assert tuple(cfg.model.test_cfg.crop_size) == (crop, crop)
    assert tuple(cfg.model.test_cfg.stride) == (crop - 32, crop - 32)
    opt = cfg.optim_wrapper.optimizer
    assert (opt.type, opt.lr, opt.momentum, opt.weight_decay) == ('SGD', 1e-3,
                                                                  0.9, 0.0)
    poly = cfg.param_scheduler[0]
    assert (poly.type, poly.power, poly.eta_min) == ('PolyLR', 0.9, 1e-5)
    assert cfg.train_cfg.max_iters == 160000
    assert cfg.train_dataloader.batch_size == 1
    assert cfg.train_dataloader.dataset.data_root == (
        'data/ade/ADEChallengeData2016')


@pytest.mark.parametrize('mode', ['sa', 'ca'])
def test_tiny_ade20k_model_builds_and_runs(mode):
    cfg = Config.fromfile(
        str(REPO_ROOT / 'configs' / 'depict' /
            f'depict-{mode}_vit-t16_8xb1-160k_ade20k-512x512.py'))
    model_cfg = cfg.model
    model_cfg.backbone.update(
        num_layers=2, out_indices=(1, ), img_size=(64, 64))
    model_cfg.data_preprocessor.size = (64, 64)
    model_cfg.test_cfg.update(crop_size=(64, 64), stride=(48, 48))
    init_default_scope('mmseg')
    model = MODELS.build(model_cfg)
    model.init_weights()
    torch.manual_seed(0)
    images = torch.randn(2, 3, 64, 64)
    samples = [
        SegDataSample(
            metainfo=dict(img_shape=(64, 64), ori_shape=(64, 64)),
            gt_sem_seg=PixelData(data=torch.randint(0, 150, (1, 64, 64))))
        for _ in range(2)
    ]
    losses = model(images, samples, mode='loss')
    assert torch.isfinite(losses['decode.loss_ce'])
    model.eval()
    with torch.no_grad():
        preds = model(images, samples, mode='predict')
    assert preds[0].seg_logits.data.shape == (150, 64, 64)
    assert preds[0].pred_sem_seg.data.shape == (1, 64, 64)
