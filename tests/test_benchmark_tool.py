"""tools/benchmark.py end to end on tiny synthetic configs, CPU, few steps.

Runs the tool as a user would (subprocess) and checks the JSON it writes:
every figure next to its baseline, the CAM mask-identity check, parameter
counts; plus the errors for options that cannot work.
"""
import importlib.util
import json
import os
import subprocess
import sys

import pytest
from golden_utils import REPO_ROOT

MCT = 'configs/mctformer/mctformer-v2_vit-t8_1xb16-2k_synthshapes-96x96.py'
MCT_V1 = 'configs/mctformer/mctformer-v1_vit-t8_1xb16-2k_synthshapes-96x96.py'
DEPICT = 'configs/depict/depict-sa_vit-t8_1xb8-2k_synthshapes-96x96.py'
FAST = ['--device', 'cpu', '--batch-size', '2', '--warmup', '1', '--iters',
        '1', '--repeat', '2']


def run_tool(args, timeout=300):
    env = dict(os.environ, PYTHONUNBUFFERED='1', OMP_NUM_THREADS='1')
    return subprocess.run([sys.executable, 'tools/benchmark.py'] + args,
                          cwd=REPO_ROOT, env=env, text=True,
                          capture_output=True, timeout=timeout)


def run_json(args, tmp_path):
    out = tmp_path / 'bench.json'
    proc = run_tool(args + ['--out', str(out)])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return json.loads(out.read_text()), proc.stdout


def check_row(row, with_baseline=True):
    assert row['images_per_s'] > 0 and row['peak_mem_mb'] > 0
    assert len(row['sec_per_iter']) == 2  # --repeat 2
    if with_baseline:
        assert row['baseline_images_per_s'] > 0
        assert row['baseline_peak_mem_mb'] > 0
        assert row['speedup'] == pytest.approx(
            row['images_per_s'] / row['baseline_images_per_s'])
        assert row['mem_ratio'] == pytest.approx(
            row['peak_mem_mb'] / row['baseline_peak_mem_mb'])


@pytest.mark.slow
def test_stage1_config(tmp_path):
    # non-square shape; scales and flip from the config's cam_scales / TTA.
    # V1 CAMs (attention + patch affinity) use only GEMMs, which give the
    # same bits for a batch as for one image here, so masks are identical.
    res, stdout = run_json([MCT_V1, '--shape', '64', '80'] + FAST, tmp_path)
    assert res['model_type'] == 'CAMSegmentor'
    assert res['device'] == 'cpu' and res['amp'] == 'off'
    assert res['shape'] == [64, 80] and res['batch_size'] == 2
    assert 'materialised' in res['baseline']
    rows = {r['task']: r for r in res['rows']}
    assert sorted(rows) == ['cam', 'train']
    for row in rows.values():
        check_row(row)
    cam = rows['cam']
    assert cam['scales'] == [1.0, 0.75, 1.25] and cam['flip'] is True
    assert cam['views_per_image'] == 6
    assert cam['max_images_per_pass'] == 2  # the CPU default
    assert cam['masks_identical'] is True
    assert cam['mask_mismatch_pixels'] == 0
    assert cam['mask_mismatch_at_ties_only'] is True
    assert cam['mask_pixels'] == 2 * 64 * 80
    # attention maps in every layer cost memory in training
    assert rows['train']['baseline_peak_mem_mb'] > rows['train'][
        'peak_mem_mb']
    assert res['params']['model'] > 0 and res['params']['head'] == 0  # V1
    assert '| train |' in stdout and 'CAM masks identical' in stdout


@pytest.mark.slow
def test_cli_scales_and_flip(tmp_path):
    # V2 adds the PatchCAM 3x3 conv, whose CPU kernel rounds differently
    # for a batch than for one image: a float tie may flip (reported)
    res, stdout = run_json([MCT, '--tasks', 'cam', '--scales', '1.0', '0.5',
                            '--no-flip', '--cam-chunk', '0'] + FAST,
                           tmp_path)
    (cam, ) = res['rows']
    assert cam['max_images_per_pass'] is None  # 0: one pass per scale
    assert cam['scales'] == [1.0, 0.5] and cam['flip'] is False
    assert cam['views_per_image'] == 2
    assert cam['mask_mismatch_at_ties_only'] is True
    assert cam['mask_mismatch_pixels'] <= 1e-3 * cam['mask_pixels']
    assert cam['max_abs_norm_cam_diff'] < 1e-3
    assert f"identical (batched vs per-image): {cam['masks_identical']}" \
        in stdout


@pytest.mark.slow
def test_depict_config(tmp_path):
    res, stdout = run_json([DEPICT] + FAST, tmp_path)
    assert 'SegmenterMaskTransformerHead' in res['baseline']
    rows = {r['task']: r for r in res['rows']}
    assert sorted(rows) == ['head_infer', 'head_train', 'infer', 'train']
    for row in rows.values():
        check_row(row)
    p = res['params']
    assert p['head'] < p['baseline_head']  # DEPICT: fewer parameters
    assert p['model'] - p['head'] == p['baseline_model'] - p['baseline_head']
    assert p['head_ratio'] == pytest.approx(p['head'] / p['baseline_head'])
    assert 'head ratio' in stdout


def load_tool():
    spec = importlib.util.spec_from_file_location(
        'benchmark_tool', REPO_ROOT / 'tools' / 'benchmark.py')
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


@pytest.mark.parametrize('args,match', [
    ([MCT, '--amp', 'fp16', '--device', 'cpu'], 'needs a CUDA device'),
    ([MCT, '--tasks', 'infer', '--device', 'cpu'], 'do not apply'),
    ([MCT, '--shape', '1', '2', '3'], '--shape takes H or H W'),
    ([MCT, '--iters', '0'], '--iters must be >= 1'),
    ([MCT, '--cam-chunk', '-1'], '--cam-chunk must be >= 0'),
])
def test_bad_options_name_the_fix(args, match, capsys):
    tool = load_tool()
    with pytest.raises(SystemExit) as exc:
        tool.main([str(REPO_ROOT / a) if a == MCT else a for a in args])
    assert exc.value.code != 0
    assert match in str(exc.value.code) + capsys.readouterr().err


def test_benchmark_targets_script_quick_run(tmp_path):
    """tools/benchmark_targets.sh (every README speed target in one run)
    works end to end in its quick CPU mode: one JSON per row, each with its
    baseline, and a summary; exit status 0."""
    env = dict(os.environ, PYTHONUNBUFFERED='1', OMP_NUM_THREADS='1',
               PYTHON=sys.executable)
    proc = subprocess.run(
        ['bash', 'tools/benchmark_targets.sh', str(tmp_path), 'cpu', 'quick'],
        cwd=REPO_ROOT, env=env, text=True, capture_output=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    tasks = {}
    for name in ('train_v2', 'train_v1', 'cam_v2', 'depict'):
        res = json.loads((tmp_path / f'{name}.json').read_text())
        tasks[name] = [row['task'] for row in res['rows']]
        for row in res['rows']:
            check_row(row)
    assert tasks == dict(train_v2=['train'], train_v1=['train'],
                         cam_v2=['cam'],
                         depict=['train', 'infer', 'head_train',
                                 'head_infer'])
    summary = (tmp_path / 'summary.txt').read_text()
    assert 'FAILED' not in summary and summary.count('speed-up') == 4
