"""Convert an original TransCAM (Conformer) checkpoint.

    python tools/model_converters/transcam2wsss.py SRC DST [--num-heads 6]

SRC is the file saved by liruiwen/TransCAM ``train_TransCAM.py`` (a bare
state dict of ``network/conformer.py::Net``, e.g. the released
``TransCAM.pth``); it is read with ``torch.load(weights_only=True)``, so a
pickle that would run code is refused. DST gets ``{'state_dict': ...,
'meta': ...}`` with the keys of wsss_zoo's ``CAMSegmentor`` (``backbone.*``,
``cam_head.*``), ready for ``tools/test.py CONFIG DST``. Unknown, missing or
mis-shaped keys abort with the list. ImageNet Conformer weights are not
converted: give them to the backbone as ``pretrained=PATH``.
"""
import argparse
import json
import os.path as osp
import sys

import torch

try:
    from wsss_zoo.compat import load_checkpoint_file
    from wsss_zoo.converters.transcam import (convert_transcam,
                                              transcam_model_cfg)
except ImportError:  # run from a checkout without installation
    sys.path.insert(0, osp.abspath(osp.join(osp.dirname(__file__), '..',
                                            '..')))
    from wsss_zoo.compat import load_checkpoint_file
    from wsss_zoo.converters.transcam import (convert_transcam,
                                              transcam_model_cfg)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('src', help='original TransCAM checkpoint (.pth)')
    parser.add_argument('dst', help='output checkpoint for wsss_zoo')
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
    result = convert_transcam(ckpt, num_heads=args.num_heads)
    torch.save(result, args.dst)
    meta = result['meta']
    print(f'converted {len(result["state_dict"])} tensors (TransCAM '
          f'Conformer, {meta["num_classes"]} foreground classes + the '
          f'unused slot 0) -> {args.dst}')
    if meta['filled_keys']:
        print(f'  filled {len(meta["filled_keys"])} absent BatchNorm '
              'num_batches_tracked counters with 0')
    print('model config:')
    print(json.dumps(transcam_model_cfg(meta), indent=2))


if __name__ == '__main__':
    main()
