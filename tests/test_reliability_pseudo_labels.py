"""Pseudo-label generation at scale: sharded over processes (gloo / CPU via
torchrun), crash-safe, resumable and deterministic.

One random-weight tiny MCTformer-V1 checkpoint and a 24-image SynthShapes
copy; ``tools/make_pseudo_labels.py`` runs as a user would run it.
"""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from reliability_utils import (make_tiny_dataset, ok, run_slurm_tasks,
                               run_tool, save_random_checkpoint, torchrun,
                               write_tiny_config)
from wsss_zoo.evaluation.pseudo_label_writer import (PseudoLabelSampler,
                                                     evaluate_pseudo_labels)

TOOL = 'tools/make_pseudo_labels.py'
NUM_TRAIN = 24


def _outputs(out_dir):
    """{relative path: bytes} of the masks and CAM files."""
    files = sorted(out_dir.glob('*.png')) + sorted(out_dir.glob('cams/*.npz'))
    return {str(p.relative_to(out_dir)): p.read_bytes() for p in files}


def _metrics(work_dir):
    return json.loads((work_dir / 'test_metrics.json').read_text())


def _generate(setup, out_dir, *extra, launcher=None, config=None):
    args = [TOOL, config or setup['config'], setup['ckpt'], '--out-dir',
            out_dir, '--work-dir', str(out_dir) + '_work', '--save-cams']
    if launcher is not None:
        args += ['--launcher', 'pytorch']
    return run_tool(args + list(extra), launcher=launcher)


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp('pseudo')
    data = make_tiny_dataset(root / 'synth', num_train=NUM_TRAIN, num_val=2)
    config = write_tiny_config(root / 'tiny.py', data)
    kill_config = write_tiny_config(
        root / 'kill.py', data,
        "custom_hooks = [dict(type='KillJobHook', at_iter=3, "
        "phase='test')]\n")
    ckpt = save_random_checkpoint(config, root / 'random.pth')
    ids = sorted((data / 'ImageSets/Segmentation/train.txt').read_text()
                 .split())
    ref_dir = root / 'one_process'
    proc = ok(_generate(dict(config=config, ckpt=ckpt), ref_dir, '--eval'))
    return dict(root=root, data=data, config=config, kill=kill_config,
                ckpt=ckpt, ids=ids, ref_dir=ref_dir,
                ref=_outputs(ref_dir), ref_metrics=_metrics(
                    root / 'one_process_work'), ref_log=proc.stdout +
                proc.stderr)


def _assert_same_as_reference(setup, out_dir):
    got, ref = _outputs(out_dir), setup['ref']
    assert sorted(got) == sorted(ref)
    assert sorted(p[:-4] for p in got if p.endswith('.png')) == setup['ids']
    for name, data in ref.items():
        if name.endswith('.png'):  # masks: byte for byte
            assert got[name] == data, name
        else:  # CAMs: same classes, values within float tolerance
            a = np.load(out_dir / name)
            b = np.load(setup['ref_dir'] / name)
            assert a.files == b.files, name
            assert np.array_equal(a['classes'], b['classes']), name
            for key in ('cams', 'raw'):
                np.testing.assert_allclose(a[key], b[key], rtol=1e-5,
                                           atol=1e-6, err_msg=name)


@pytest.mark.slow
def test_two_processes_split_the_images_and_equal_one_process(setup):
    out = setup['root'] / 'two_processes'
    proc = ok(_generate(setup, out, '--eval', launcher=torchrun(2)))
    log = proc.stdout + proc.stderr
    assert f'{NUM_TRAIN} to do on 2 process(es)' in log
    _assert_same_as_reference(setup, out)
    metrics = _metrics(setup['root'] / 'two_processes_work')
    # every image written exactly once: the ranks' counts sum to N
    assert metrics['pseudo_labels_written'] == NUM_TRAIN
    assert metrics['pseudo_labels_kept'] == 0
    assert metrics['mIoU'] == setup['ref_metrics']['mIoU']
    assert not list(out.glob('.tmp_*')) and not list(out.glob('cams/.tmp_*'))


def _complete_ids(out_dir):
    return sorted(p.stem for p in out_dir.glob('*.png')
                  if (out_dir / 'cams' / (p.stem + '.npz')).is_file())


@pytest.mark.slow
def test_sigkill_mid_generation_then_rerun_matches(setup):
    """rank 0 SIGKILLs the whole 2-process job after 3 of its 6 batches."""
    out = setup['root'] / 'killed'
    proc = _generate(setup, out, launcher=torchrun(2), config=setup['kill'])
    assert proc.returncode != 0, 'the job was not killed'
    done = _complete_ids(out)
    assert 0 < len(done) < NUM_TRAIN
    # no partial file under a final name: every output reads completely
    for png in out.glob('*.png'):
        with Image.open(png) as image:
            image.load()
    for npz in out.glob('cams/*.npz'):
        with np.load(npz) as arrays:
            [arrays[k] for k in arrays.files]
    before = {i: (out / f'{i}.png').stat().st_mtime_ns for i in done}

    # rerun (1 process; --skip-existing is the default, still accepted)
    ok(_generate(setup, out, '--skip-existing'))
    metrics = _metrics(setup['root'] / 'killed_work')
    assert metrics['pseudo_labels_kept'] == len(done)
    assert metrics['pseudo_labels_written'] == NUM_TRAIN - len(done)
    for i in done:  # complete outputs were skipped, not rewritten
        assert (out / f'{i}.png').stat().st_mtime_ns == before[i]
    _assert_same_as_reference(setup, out)
    assert not list(out.glob('.tmp_*')) and not list(out.glob('cams/.tmp_*'))


@pytest.mark.slow
def test_generation_is_deterministic_and_overwrite_redoes(setup):
    """A second generation over the reference folder, with --overwrite and
    2 tasks of ``--launcher slurm`` (the variables srun sets), rewrites
    every file with identical content."""
    out = setup['ref_dir']
    args = [TOOL, setup['config'], setup['ckpt'], '--out-dir', out,
            '--work-dir', str(out) + '_again', '--save-cams', '--overwrite',
            '--eval']
    for proc in run_slurm_tasks(args, ntasks=2):
        ok(proc)
    metrics = _metrics(setup['root'] / 'one_process_again')
    assert metrics['pseudo_labels_written'] == NUM_TRAIN
    assert metrics['pseudo_labels_kept'] == 0
    assert metrics['mIoU'] == setup['ref_metrics']['mIoU']
    assert _outputs(out) == setup['ref']


# ----------------------------------------------------------------------------
# fast unit tests of the pieces

class _Dataset:
    def __init__(self, paths):
        self.paths = paths

    def __len__(self):
        return len(self.paths)

    def get_data_info(self, i):
        return dict(img_path=self.paths[i])


@pytest.mark.parametrize('world_size', [1, 2, 3, 5])
def test_sampler_shards_pending_images_exactly_once(tmp_path, monkeypatch,
                                                    world_size):
    import wsss_zoo.evaluation.pseudo_label_writer as writer
    paths = [f'/data/img/{i:03d}.jpg' for i in range(11)]
    for i in (0, 4, 5, 9):  # complete outputs of an earlier run
        (tmp_path / f'{i:03d}.png').write_bytes(b'x')
        (tmp_path / 'cams').mkdir(exist_ok=True)
        (tmp_path / 'cams' / f'{i:03d}.npz').write_bytes(b'x')
    (tmp_path / '001.png').write_bytes(b'x')  # mask without its CAM file
    shared = {}

    def broadcast(box, src=0):  # rank 0's view reaches every rank
        if box[0] is not None:
            shared['pending'] = box[0]
        else:
            box[0] = shared['pending']

    monkeypatch.setattr(writer, 'broadcast_object_list', broadcast)
    shards = []
    for rank in range(world_size):
        monkeypatch.setattr(writer, 'get_dist_info',
                            lambda r=rank: (r, world_size))
        sampler = PseudoLabelSampler(_Dataset(paths), str(tmp_path),
                                     save_cams=True)
        shards.append(list(sampler))
        assert len(sampler) == len(shards[-1])
        # rank 0 has started writing: later ranks must not shard otherwise
        (tmp_path / f'{shards[0][0]:03d}.png').write_bytes(b'x')
        (tmp_path / 'cams' / f'{shards[0][0]:03d}.npz').write_bytes(b'x')
    flat = [i for shard in shards for i in shard]
    assert sorted(flat) == [1, 2, 3, 6, 7, 8, 10]  # pending, no repeats
    assert len(flat) == len(set(flat))
    # --overwrite: everything, still once
    monkeypatch.setattr(writer, 'get_dist_info', lambda: (0, 1))
    assert list(PseudoLabelSampler(_Dataset(paths), str(tmp_path),
                                   overwrite=True)) == list(range(11))
    # without CAM outputs, the mask alone completes an image
    (tmp_path / 'cams' / '001.npz').unlink(missing_ok=True)
    assert 1 not in list(PseudoLabelSampler(_Dataset(paths), str(tmp_path)))
    assert 2 in list(PseudoLabelSampler(_Dataset(paths), str(tmp_path)))


def test_sampler_refuses_duplicate_image_ids(tmp_path):
    paths = ['/a/x/1.jpg', '/a/y/1.jpg', '/a/x/2.jpg']
    with pytest.raises(ValueError, match=r"/a/x/1.jpg and /a/y/1.jpg"):
        PseudoLabelSampler(_Dataset(paths), str(tmp_path))


def test_evaluate_pseudo_labels_reads_the_files(tmp_path):
    class Data(_Dataset):
        metainfo = dict(classes=('bg', 'a', 'b'))

        def get_data_info(self, i):
            return dict(img_path=f'/x/{i}.jpg',
                        seg_map_path=str(tmp_path / 'gt' / f'{i}.png'))

    (tmp_path / 'gt').mkdir()
    (tmp_path / 'pl').mkdir()
    gt = np.array([[0, 1], [2, 255]], np.uint8)
    pred = np.array([[0, 1], [1, 2]], np.uint8)
    Image.fromarray(gt).save(tmp_path / 'gt' / '0.png')
    Image.fromarray(pred).save(tmp_path / 'pl' / '0.png')
    metrics = evaluate_pseudo_labels(str(tmp_path / 'pl'), Data([0]))
    # bg 1/1, a 1/2 (pred 1 also at a 'b' pixel), b 0/1 (255 ignored)
    assert metrics['IoU.bg'] == 100.0 and metrics['IoU.a'] == 50.0
    assert metrics['IoU.b'] == 0.0 and metrics['mIoU'] == 50.0
    os.remove(tmp_path / 'pl' / '0.png')
    with pytest.raises(FileNotFoundError, match='0.png'):
        evaluate_pseudo_labels(str(tmp_path / 'pl'), Data([0]))


def test_writer_counts_and_removes_stale_temporaries(tmp_path):
    from mmengine.structures import PixelData

    from mmseg.structures import SegDataSample
    from wsss_zoo.evaluation.pseudo_label_writer import PseudoLabelWriter
    (tmp_path / '.tmp_abc.png').write_bytes(b'half')  # left by a kill
    writer = PseudoLabelWriter(str(tmp_path), overwrite=False)
    samples = []
    for name in ('a', 'b'):
        s = SegDataSample(metainfo=dict(img_path=f'/x/{name}.jpg'))
        s.pred_sem_seg = PixelData(data=torch.ones(1, 4, 5, dtype=torch.long))
        samples.append(s.to_dict())
    (tmp_path / 'b.png').write_bytes(b'kept')
    writer.process({}, samples)
    metrics = writer.evaluate(size=2)
    assert metrics == dict(pseudo_labels_written=1.0, pseudo_labels_kept=1.0)
    assert (tmp_path / 'b.png').read_bytes() == b'kept'
    assert np.array(Image.open(tmp_path / 'a.png')).tolist() == [[1] * 5] * 4
    assert not list(tmp_path.glob('.tmp_*'))


@pytest.mark.parametrize('palette', [None, [[0, 0, 0], [128, 0, 0]]])
def test_writer_keeps_every_class_index_with_or_without_palette(
        tmp_path, palette):
    """Masks are written as index PNGs whatever the dataset's palette (a
    palette-less 'P' image used to come back as 0/1 under Pillow 13)."""
    from mmengine.structures import PixelData

    from mmseg.structures import SegDataSample
    from wsss_zoo.evaluation.pseudo_label_writer import PseudoLabelWriter
    writer = PseudoLabelWriter(str(tmp_path))
    writer.dataset_meta = None if palette is None else dict(palette=palette)
    mask = torch.tensor([[0, 3, 20, 255], [1, 2, 7, 12]])
    s = SegDataSample(metainfo=dict(img_path='/x/img.jpg'))
    s.pred_sem_seg = PixelData(data=mask[None])
    writer.process({}, [s.to_dict()])
    with Image.open(tmp_path / 'img.png') as png:
        assert png.mode == ('L' if palette is None else 'P')
        assert np.array(png).tolist() == mask.tolist()
