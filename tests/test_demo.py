"""tools/demo.py: every --stage1 choice has its config, and a choice that
needs another version of the data gets it (the full run is `make demo`)."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]


def load(name, path):
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_stage1_choice_has_a_config():
    demo = load('demo', 'tools/demo.py')
    for name, config in demo.STAGE1_CONFIGS.items():
        assert (REPO_ROOT / config).is_file(), (name, config)
    assert set(demo.STAGE1_DATA) <= set(demo.STAGE1_CONFIGS)
    assert demo.parse_args([]).stage1 == 'mctformer_v2'


def test_tscam_1obj_data_has_one_object_class_per_image(tmp_path):
    demo = load('demo', 'tools/demo.py')
    make = load('make_synthetic_dataset', 'tools/make_synthetic_dataset.py')
    suffix, args = demo.STAGE1_DATA['tscam_1obj']
    out = tmp_path / ('synth' + suffix)
    make.main(['--out', str(out), '--num-train', '12', '--num-val', '4'] +
              args)
    masks = sorted((out / 'SegmentationClass').glob('*.png'))
    assert len(masks) == 16
    for path in masks:
        classes = set(np.unique(np.asarray(Image.open(path)))) - {0, 255}
        assert len(classes) == 1, (path.name, classes)
    # the default data has images with several classes (the check can fail)
    many = tmp_path / 'synth'
    make.main(['--out', str(many), '--num-train', '12', '--num-val', '4'])
    counts = [
        len(set(np.unique(np.asarray(Image.open(p)))) - {0, 255})
        for p in (many / 'SegmentationClass').glob('*.png')
    ]
    assert max(counts) > 1


def test_stage2_init_needs_a_vit_stage1(capsys):
    demo = load('demo', 'tools/demo.py')
    assert demo.parse_args([]).stage2_init == 'scratch'
    assert demo.parse_args(['--stage2-init', 'stage1']).stage2_init == \
        'stage1'
    with pytest.raises(SystemExit):
        demo.parse_args(['--stage1', 'transcam', '--stage2-init', 'stage1'])
    assert 'Conformer' in capsys.readouterr().err
