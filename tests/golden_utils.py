"""Golden-fixture discovery and comparison shared by the parity tests.

Cases are every ``<model>/case_*.pt`` under ``../shared/golden`` (relative to
the repository root) plus every folder in ``WSSS_GOLDEN_DIRS``
(':'-separated, same ``<model>/<case>.pt`` layout), so new cases are picked up
without code changes.
"""
import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_GOLDEN = REPO_ROOT.parent / 'shared' / 'golden'


def golden_roots():
    roots = [DEFAULT_GOLDEN]
    extra = os.environ.get('WSSS_GOLDEN_DIRS', '')
    roots += [Path(p) for p in extra.split(':') if p]
    return roots


def golden_case_files(model: str):
    """All case files of one model folder, sorted, over every golden root."""
    files = []
    for root in golden_roots():
        folder = root / model
        if folder.is_dir():
            files += sorted(folder.glob('*.pt'))
    return files


def golden_params(model: str):
    """pytest params, one per case, id ``<model>/<case>``.

    A model folder with no case at all gives one failing test (not a skip):
    the parity test must not silently stop running.
    """
    files = golden_case_files(model)
    if not files:
        return [pytest.param(None, id=f'{model}/MISSING')]
    return [pytest.param(f, id=f'{model}/{f.stem}') for f in files]


def load_case(path):
    if path is None:
        pytest.fail(f'no golden case file found in {golden_roots()}')
    return torch.load(path, map_location='cpu', weights_only=True)


def rel_err(ours, golden) -> float:
    """max|ours - golden| / max|golden| (the fixtures' tolerance measure)."""
    ours = torch.as_tensor(ours).detach().double()
    golden = torch.as_tensor(golden).detach().double()
    assert ours.shape == golden.shape, (ours.shape, golden.shape)
    scale = golden.abs().max().clamp_min(1e-30)
    return ((ours - golden).abs().max() / scale).item()


def assert_close_rel(ours, golden, rtol=1e-5, name=''):
    err = rel_err(ours, golden)
    assert err <= rtol, f'{name}: relative error {err:.3e} > {rtol:.1e}'
