"""Convert an original TS-CAM (DeiT) checkpoint.

    python tools/model_converters/tscam2wsss.py SRC DST [--num-heads 6]

SRC is a file saved by vasgaowei/TS-CAM ``tools_cam/train_cam.py``
(``{'epoch', 'state_dict', 'best_map'}``, ``module.`` prefixes) or a bare
state dict; it is read with ``torch.load(weights_only=True)``, so a pickle
that would run code is refused. DST gets ``{'state_dict': ..., 'meta':
...}`` with the keys of wsss_zoo's ``CAMSegmentor`` (``backbone.*``,
``cam_head.*``), ready for ``tools/test.py CONFIG DST``. Unknown or missing
keys abort with the list.
"""
import argparse
import json
import os.path as osp
import sys

import torch

try:
    from wsss_zoo.converters.tscam import convert_tscam, tscam_model_cfg
except ImportError:  # run from a checkout without installation
    sys.path.insert(0, osp.abspath(osp.join(osp.dirname(__file__), '..',
                                            '..')))
    from wsss_zoo.converters.tscam import convert_tscam, tscam_model_cfg


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('src', help='original TS-CAM checkpoint (.pth)')
    parser.add_argument('dst', help='output checkpoint for wsss_zoo')
    parser.add_argument(
        '--num-heads', type=int, default=None,
        help='attention heads (not in the weights; default embed_dims//64)')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if not osp.isfile(args.src):
        raise FileNotFoundError(f'checkpoint not found: {args.src}')
    ckpt = torch.load(args.src, map_location='cpu', weights_only=True)
    result = convert_tscam(ckpt, num_heads=args.num_heads)
    torch.save(result, args.dst)
    meta = result['meta']
    print(f'converted {len(result["state_dict"])} tensors (TS-CAM, '
          f'{meta["num_classes"]} classes) -> {args.dst}')
    print('model config:')
    print(json.dumps(tscam_model_cfg(meta), indent=2))


if __name__ == '__main__':
    main()
