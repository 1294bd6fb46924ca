"""The wsss_zoo demo: the whole WSSS pipeline on the built-in synthetic data.

    python tools/demo.py [--stage1 mctformer_v2] [--work-dir work_dirs/demo]
                         [--data-root data/synthshapes] [--fast]
                         [--stage2-init {scratch,stage1}] [--crf {voc,coco}]
    python tools/demo.py --depict-only      # DEPICT on the real masks

Steps (each one is an ordinary tool call, printed before it runs):

1. ``tools/make_synthetic_dataset.py``: SynthShapes (no download);
2. stage 1, ``tools/train.py``: the CAM model trained on image-level labels;
3. ``tools/test.py``: CAM mIoU on val (background-threshold sweep, best t);
4. ``tools/make_pseudo_labels.py --eval``: pseudo masks of the train split
   (the config's TTA views: multi-scale + flip, or scale 1 + flip for
   ``tscam_1obj``; ``--crf``: then a dense CRF on each image) and their
   mIoU against the real train masks;
5. stage 2, ``tools/train.py``: DEPICT trained on the pseudo masks;
6. ``tools/test.py``: stage-2 mIoU on val against the real masks;
7. ``tools/visualize_cams.py``: CAM overlays of a few val images.
"""
import argparse
import json
import os
import os.path as osp
import subprocess
import sys
import time

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
STAGE1_CONFIGS = {
    'mctformer_v2':
    'configs/mctformer/mctformer-v2_vit-t8_1xb16-2k_synthshapes-96x96.py',
    'mctformer_v1':
    'configs/mctformer/mctformer-v1_vit-t8_1xb16-2k_synthshapes-96x96.py',
    'mctformer_plus':
    'configs/mctformer/mctformer-plus_vit-t8_1xb16-2k_synthshapes-96x96.py',
    'tscam': 'configs/tscam/tscam_vit-t8_1xb16-2k_synthshapes-96x96.py',
    'tscam_1obj':
    'configs/tscam/tscam_vit-t8_1xb16-2k_synthshapes-1obj-96x96.py',
    'transcam':
    'configs/transcam/transcam_conformer-t_1xb16-2k_synthshapes-96x96.py',
    'weaktr': 'configs/weaktr/weaktr_vit-t8_1xb16-2k_synthshapes-96x96.py',
}
# stage-1 choices that need another version of the data: (suffix of the data
# root, make_synthetic_dataset.py options)
STAGE1_DATA = {'tscam_1obj': ('_1obj', ['--max-objects', '1'])}
STAGE2_CONFIG = 'configs/depict/depict-sa_vit-t8_1xb8-2k_synthshapes-96x96.py'
STAGE2_PSEUDO_CONFIG = \
    'configs/depict/depict-sa_vit-t8_1xb8-2k_synthshapes-pseudo-96x96.py'


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--stage1', choices=sorted(STAGE1_CONFIGS),
                        default='mctformer_v2')
    parser.add_argument('--depict-only', action='store_true',
                        help='only train/test DEPICT on the real masks')
    parser.add_argument('--work-dir', default='work_dirs/demo')
    parser.add_argument('--data-root', default='data/synthshapes',
                        help="'_1obj' is appended for --stage1 tscam_1obj "
                        '(one object per image)')
    parser.add_argument('--fast', action='store_true',
                        help='10x fewer iterations (smoke test)')
    parser.add_argument(
        '--stage2-init', choices=['scratch', 'stage1'], default='scratch',
        help="stage-2 encoder: from scratch (default) or the stage-1 "
        'encoder (tools/model_converters/stage1_to_vit.py; a stand-in for '
        'the ImageNet weights the papers use; ViT stage-1 models only)')
    parser.add_argument(
        '--crf', choices=['voc', 'coco'], default=None,
        help='refine the pseudo labels with a dense CRF (WeakTr\'s label '
        'CRF; tools/make_pseudo_labels.py --crf; needs pydensecrf2, which '
        '`make install` builds)')
    args = parser.parse_args(argv)
    if args.stage2_init == 'stage1' and args.stage1 == 'transcam':
        parser.error("--stage2-init stage1 needs a ViT stage-1 encoder; "
                     "TransCAM's Conformer cannot initialise the stage-2 "
                     'ViT')
    return args


def run(cmd, log):
    print('\n$ ' + ' '.join(cmd), flush=True)
    start = time.time()
    with open(log, 'w') as f:
        proc = subprocess.run([sys.executable] + cmd, cwd=REPO, stdout=f,
                              stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        with open(log) as f:
            tail = f.read()[-4000:]
        raise SystemExit(f'step failed (exit {proc.returncode}), log {log}:'
                         f'\n{tail}')
    print(f'  done in {time.time() - start:.0f} s (log: {log})', flush=True)


def last_metrics(work_dir):
    """The metrics tools/test.py wrote to <work_dir>/test_metrics.json."""
    with open(osp.join(work_dir, 'test_metrics.json')) as f:
        return json.load(f)


def checkpoint_of(work_dir):
    with open(osp.join(work_dir, 'last_checkpoint')) as f:
        return f.read().strip()


def main(argv=None):
    args = parse_args(argv)
    work = osp.abspath(args.work_dir)
    os.makedirs(work, exist_ok=True)
    data_root = osp.abspath(args.data_root)
    suffix, data_args = ('', [])
    if not args.depict_only:
        suffix, data_args = STAGE1_DATA.get(args.stage1, ('', []))
    data_root += suffix
    start = time.time()
    iters = []
    if args.fast:
        iters = ['train_cfg.max_iters=200', 'train_cfg.val_interval=200',
                 'default_hooks.checkpoint.interval=200']
    data_opt = [f'train_dataloader.dataset.data_root={data_root}',
                f'val_dataloader.dataset.data_root={data_root}',
                f'test_dataloader.dataset.data_root={data_root}']

    run(['tools/make_synthetic_dataset.py', '--out', data_root] + data_args,
        osp.join(work, 'make_data.log'))
    results = {}
    if args.depict_only:
        s2 = osp.join(work, 'depict')
        run(['tools/train.py', STAGE2_CONFIG, '--work-dir', s2,
             '--cfg-options'] + data_opt + iters, osp.join(work, 'depict.log'))
        run(['tools/test.py', STAGE2_CONFIG, checkpoint_of(s2), '--work-dir',
             osp.join(s2, 'test'), '--cfg-options'] + data_opt,
            osp.join(work, 'depict_test.log'))
        results['DEPICT mIoU (val, real masks)'] = last_metrics(
            osp.join(s2, 'test'))['mIoU']
    else:
        cfg1 = STAGE1_CONFIGS[args.stage1]
        s1 = osp.join(work, 'stage1_' + args.stage1)
        run(['tools/train.py', cfg1, '--work-dir', s1, '--cfg-options'] +
            data_opt + iters, osp.join(work, 'stage1_train.log'))
        ckpt1 = checkpoint_of(s1)
        run(['tools/test.py', cfg1, ckpt1, '--work-dir',
             osp.join(s1, 'test'), '--cfg-options'] + data_opt,
            osp.join(work, 'stage1_test.log'))
        cam = last_metrics(osp.join(s1, 'test'))
        pseudo_dir = osp.join(work, 'pseudo_labels')
        crf = ['--crf', args.crf] if args.crf else []
        run(['tools/make_pseudo_labels.py', cfg1, ckpt1, '--out-dir',
             pseudo_dir, '--eval', '--work-dir', osp.join(s1, 'pseudo')] +
            crf + ['--cfg-options'] + [
                 f'pseudo_label_dataloader.dataset.data_root={data_root}'
             ], osp.join(work, 'pseudo_labels.log'))
        pseudo = last_metrics(osp.join(s1, 'pseudo'))
        s2 = osp.join(work, 'stage2_depict')
        init = []
        if args.stage2_init == 'stage1':
            init_path = osp.join(work, 'stage2_init_vit.pth')
            run(['tools/model_converters/stage1_to_vit.py', ckpt1,
                 init_path], osp.join(work, 'stage2_init.log'))
            init = ['model.backbone.init_cfg.type=Pretrained',
                    f'model.backbone.init_cfg.checkpoint={init_path}']
        run(['tools/train.py', STAGE2_PSEUDO_CONFIG, '--work-dir', s2,
             '--cfg-options'] + data_opt + iters +
            [f'pseudo_label_dir={pseudo_dir}'] + init,
            osp.join(work, 'stage2_train.log'))
        run(['tools/test.py', STAGE2_PSEUDO_CONFIG, checkpoint_of(s2),
             '--work-dir', osp.join(s2, 'test'), '--cfg-options'] + data_opt,
            osp.join(work, 'stage2_test.log'))
        seg = last_metrics(osp.join(s2, 'test'))
        vis_dir = osp.join(work, 'cam_overlays')
        val_ids = open(osp.join(data_root, 'ImageSets', 'Segmentation',
                                'val.txt')).read().split()[:4]
        images = [osp.join(data_root, 'JPEGImages', i + '.jpg')
                  for i in val_ids]
        run(['tools/visualize_cams.py', cfg1, ckpt1] + images +
            ['--out-dir', vis_dir], osp.join(work, 'visualize.log'))
        results[f'CAM mIoU (val, best bg threshold {cam.get("best_thr")})'] \
            = cam['mIoU']
        results['uniform-CAM reference mIoU (val)'] = cam.get('uniform_mIoU')
        crf_note = f', dense CRF {args.crf}' if args.crf else ''
        results[f'pseudo-label mIoU (train, TTA views of the config'
                f'{crf_note})'] = pseudo['mIoU']
        results[f'stage-2 DEPICT mIoU (val, real masks; encoder from '
                f'{args.stage2_init})'] = seg['mIoU']
        results['CAM overlays'] = vis_dir
    print('\n==== wsss_zoo demo results ====')
    for key, value in results.items():
        print(f'{key}: {value}')
    print(f'total time: {(time.time() - start) / 60:.1f} min')
    with open(osp.join(work, 'results.json'), 'w') as f:
        json.dump(results, f, indent=2)
    return results


if __name__ == '__main__':
    main()
