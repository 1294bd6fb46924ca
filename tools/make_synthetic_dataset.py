"""Generate SynthShapes, the built-in synthetic WSSS dataset (no download).

    python tools/make_synthetic_dataset.py --out data/synthshapes \\
        [--num-train 2000 --num-val 120 --img-size 96 --seed 0] [--force]

Writes both mmseg layouts (VOC: JPEGImages, SegmentationClass,
ImageSets/Segmentation, cls_labels.npy; ADE20K: images/, annotations/) plus
classes.txt and meta.json, and prints the summary. Nothing is regenerated
when meta.json already records the same arguments (use --force).
See wsss_zoo/datasets/synthetic.py for what the images contain.
"""
import argparse
import inspect
import json
import os.path as osp
import sys
import time

try:
    import wsss_zoo  # noqa: F401
except ImportError:  # run from a checkout without installing the package
    sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
    import wsss_zoo  # noqa: F401

from wsss_zoo.datasets.synthetic import (FORMAT_VERSION, make_synthshapes,
                                         read_meta)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Generate the SynthShapes dataset.')
    parser.add_argument('--out', default='data/synthshapes',
                        help='dataset root (default: data/synthshapes)')
    defaults = inspect.signature(make_synthshapes).parameters
    for name in ('num_train', 'num_val', 'img_size', 'seed', 'min_objects',
                 'max_objects'):
        default = defaults[name].default
        parser.add_argument('--' + name.replace('_', '-'), type=int,
                            default=default, help=f'default: {default}')
    parser.add_argument('--force', action='store_true',
                        help='regenerate even if meta.json matches')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    gen_args = dict(num_train=args.num_train, num_val=args.num_val,
                    img_size=args.img_size, seed=args.seed,
                    min_objects=args.min_objects, max_objects=args.max_objects)
    out = osp.abspath(args.out)
    meta = read_meta(out)
    if (not args.force and meta is not None
            and meta.get('args') == gen_args
            and meta.get('format_version') == FORMAT_VERSION):
        print(f'SynthShapes already at {out} with these arguments '
              '(use --force to regenerate).')
        summary = meta['summary']
    else:
        start = time.time()
        summary = make_synthshapes(out, **gen_args)
        print(f'SynthShapes written to {out} in {time.time() - start:.1f} s')
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == '__main__':
    main()
