"""Convert an original MCTformer (V1 / V2 / MCTformer+) checkpoint.

    python tools/model_converters/mctformer2wsss.py SRC DST [--version v2]

SRC is a file saved by xulianuwa/MCTformer ``main.py`` (``{'model': sd}``)
or a bare state dict; DST gets ``{'state_dict': ..., 'meta': ...}`` with the
keys of wsss_zoo's ``CAMSegmentor`` (``backbone.*``, ``cam_head.*``), ready
for ``tools/test.py CONFIG DST``. Unknown or missing keys abort with the
list; keys the original never uses are reported as dropped.
"""
import argparse
import json
import os.path as osp
import sys

import torch

try:
    from wsss_zoo.converters.mctformer import (convert_mctformer,
                                               mctformer_model_cfg)
    from wsss_zoo.compat import load_checkpoint_file
except ImportError:  # run from a checkout without installation
    sys.path.insert(0, osp.abspath(osp.join(osp.dirname(__file__), '..',
                                            '..')))
    from wsss_zoo.converters.mctformer import (convert_mctformer,
                                               mctformer_model_cfg)
    from wsss_zoo.compat import load_checkpoint_file


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('src', help='original MCTformer checkpoint (.pth)')
    parser.add_argument('dst', help='output checkpoint for wsss_zoo')
    parser.add_argument(
        '--version', choices=['v1', 'v2', 'plus'], default=None,
        help='model version (default: inferred from the keys)')
    parser.add_argument(
        '--num-heads', type=int, default=None,
        help='attention heads (not in the weights; default embed_dims//64)')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if not osp.isfile(args.src):
        raise FileNotFoundError(f'checkpoint not found: {args.src}')
    # weights_only=True; a pickle that would run code is refused clearly
    ckpt = load_checkpoint_file(args.src, map_location='cpu')
    result = convert_mctformer(
        ckpt, version=args.version, num_heads=args.num_heads)
    torch.save(result, args.dst)
    meta = result['meta']
    print(f'converted {len(result["state_dict"])} tensors '
          f'(MCTformer {meta["version"]}) -> {args.dst}')
    for key, why in meta['dropped_keys'].items():
        print(f'  dropped {key}: {why}')
    print('model config:')
    print(json.dumps(mctformer_model_cfg(meta), indent=2))


if __name__ == '__main__':
    main()
