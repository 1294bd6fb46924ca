"""Convert an official DEPICT checkpoint to an mmseg checkpoint.

    python tools/model_converters/depict2mmseg.py SRC DST

SRC: a checkpoint saved by DEPICT/Segmenter's ``train.py``
(``{'model': state_dict, 'n_cls': ..., ...}``) or a bare state_dict
(whole model with ``encoder.``/``decoder.`` keys, or a bare decoder).
DST: ``{'state_dict': ..., 'meta': {...}}`` for mmseg's ``load_from`` /
``tools/test.py CONFIG DST``. The inferred settings and the config values the
model needs (``patch_bias=True``, LayerNorm eps 1e-5, bilinear pos-embed
resizing, ``img_size``) are printed. The file is read with
``torch.load(weights_only=True)``: nothing in it is executed.
"""
import argparse
import os
import os.path as osp
import pprint
import sys

import torch

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)  # run from a checkout without installing

from wsss_zoo.converters.depict import config_hints, convert_depict  # noqa


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Convert an official DEPICT (Segmenter-layout) '
        'checkpoint to mmseg EncoderDecoder(VisionTransformer, DEPICTHead) '
        'keys.')
    parser.add_argument('src', help='official checkpoint (.pth)')
    parser.add_argument('dst', help='output mmseg checkpoint (.pth)')
    parser.add_argument(
        '--sa-head-dims',
        type=int,
        default=100,
        help='self-attention head width of the checkpoint (default 100)')
    parser.add_argument(
        '--ca-head-dims',
        type=int,
        default=50,
        help='cross-attention head width of the checkpoint (default 50)')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if not osp.isfile(args.src):
        sys.exit(f'depict2mmseg: no such file: {args.src}')
    try:
        checkpoint = torch.load(
            args.src, map_location='cpu', weights_only=True)
    except Exception as e:  # noqa: BLE001 (report and stop, never unpickle)
        sys.exit(f'depict2mmseg: cannot read {args.src} with '
                 f'torch.load(weights_only=True): {e}\nIf the file holds '
                 'more than tensors/dicts, re-save only its "model" '
                 'state_dict from a trusted environment.')
    if not isinstance(checkpoint, dict):
        sys.exit(f'depict2mmseg: expected a dict in {args.src}, got '
                 f'{type(checkpoint).__name__}')
    try:
        state_dict, info = convert_depict(checkpoint, args.sa_head_dims,
                                          args.ca_head_dims)
    except ValueError as e:
        sys.exit(f'depict2mmseg: {e}')
    hints = config_hints(info)
    meta = dict(
        converted_from=osp.basename(args.src),
        converter='wsss_zoo tools/model_converters/depict2mmseg.py',
        info=info,
        config=hints)
    dst_dir = osp.dirname(osp.abspath(args.dst))
    os.makedirs(dst_dir, exist_ok=True)
    torch.save(dict(state_dict=state_dict, meta=meta), args.dst)

    print(f'converted {len(state_dict)} tensors: {args.src} -> {args.dst}')
    print(f"layout: {info['layout']}")
    print('inferred settings:')
    pprint.pprint(info, sort_dicts=False)
    print('config values this checkpoint needs (model=dict(...)):')
    pprint.pprint(hints, sort_dicts=False)
    if 'backbone' in info:
        bb = info['backbone']
        if bb['img_size'] is None:
            print(f"NOTE: pos_embed has {bb['num_patches']} patch rows, not a "
                  'square grid: set backbone.img_size to the training crop '
                  f"(H/{bb['patch_size']} x W/{bb['patch_size']} = "
                  f"{bb['num_patches']}).")
        else:
            print(f"NOTE: backbone.img_size={bb['img_size']} assumes a "
                  'square training grid (only the pos_embed length is '
                  'stored); set it to the training crop if it was not.')
        if bb['num_heads'] is None:
            print('NOTE: backbone.num_heads is not stored in the weights '
                  f"and {bb['embed_dims']} is not a standard ViT width: set "
                  'it by hand.')
        else:
            print(f"NOTE: backbone.num_heads={bb['num_heads']} is the "
                  'standard ViT value for this width (not stored in the '
                  'weights).')
        print('Also required: backbone.patch_bias=True, '
              "norm_cfg=dict(type='LN', eps=1e-5), "
              "interpolate_mode='bilinear', final_norm=True; data "
              "preprocessor mean=std=[127.5]*3 for 'vit' checkpoints. "
              'mmseg loads checkpoints non-strictly: check the log for '
              'missing keys.')
    else:
        print('decoder-only checkpoint: keys are DEPICTHead names (no '
              'prefix); load into a DEPICTHead.')


if __name__ == '__main__':
    main()
