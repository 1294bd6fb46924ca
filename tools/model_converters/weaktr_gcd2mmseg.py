"""Convert an official WeakTr stage-2 (online retraining) checkpoint to mmseg.

    python tools/model_converters/weaktr_gcd2mmseg.py SRC DST

SRC: a checkpoint saved by WeakTr's ``OnlineRetraining/segm/train.py``
(``{'model': state_dict, 'n_cls': ..., ...}``: Segmenter ``encoder.*`` +
``decoder.*``), a bare decoder state_dict, or the ImageNet DeiT/ViT
checkpoint the original starts stage 2 from (e.g.
``deit_small_patch16_224-cd65a155.pth``).
DST: ``{'state_dict': ..., 'meta': {...}}``: for a Segmenter, keys of mmseg
``EncoderDecoder(VisionTransformer, WeakTrGCDHead)`` for ``load_from`` /
``tools/test.py CONFIG DST``; for an ImageNet checkpoint, bare
``VisionTransformer`` keys for ``model.pretrained``. The inferred settings
and the config values the model needs are printed. The file is read with
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

from wsss_zoo.converters.weaktr_gcd import (config_hints,  # noqa: E402
                                            convert_weaktr_gcd)

PROG = 'weaktr_gcd2mmseg'


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Convert an official WeakTr stage-2 (Segmenter-layout) '
        'checkpoint to mmseg EncoderDecoder(VisionTransformer, '
        'WeakTrGCDHead) keys.')
    parser.add_argument('src', help='official checkpoint (.pth)')
    parser.add_argument('dst', help='output mmseg checkpoint (.pth)')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if not osp.isfile(args.src):
        sys.exit(f'{PROG}: no such file: {args.src}')
    try:
        checkpoint = torch.load(
            args.src, map_location='cpu', weights_only=True)
    except Exception as e:  # noqa: BLE001 (report and stop, never unpickle)
        sys.exit(f'{PROG}: cannot read {args.src} with '
                 f'torch.load(weights_only=True): {e}\nThe official stage-2 '
                 "checkpoints may hold a 0-d tensor 'miou' and optimiser "
                 'state (fine); if the file holds other objects, re-save its '
                 '"model" state_dict from a trusted environment.')
    try:
        state_dict, info = convert_weaktr_gcd(checkpoint)
    except ValueError as e:
        sys.exit(f'{PROG}: {e}')
    hints = config_hints(info)
    meta = dict(
        converted_from=osp.basename(args.src),
        converter=f'wsss_zoo tools/model_converters/{PROG}.py',
        info=info,
        config=hints)
    os.makedirs(osp.dirname(osp.abspath(args.dst)), exist_ok=True)
    torch.save(dict(state_dict=state_dict, meta=meta), args.dst)

    print(f'converted {len(state_dict)} tensors: {args.src} -> {args.dst}')
    print(f"layout: {info['layout']}")
    print('inferred settings:')
    pprint.pprint(info, sort_dicts=False)
    print('config values this checkpoint needs (model=dict(...)):')
    pprint.pprint(hints, sort_dicts=False)
    if info['layout'] == 'imagenet_encoder':
        print(f'ImageNet encoder: use it as model.pretrained={args.dst!r} '
              '(bare VisionTransformer keys; pos_embed is resized '
              'bilinearly to backbone.img_size at load).')
    if 'decode_head' in info:
        print('NOTE: decode_head.num_heads is not stored in the weights; '
              'the value above is the original factory rule embed_dims // '
              '64. Set it if the model was built otherwise.')
    if info['layout'] == 'segmentor':
        bb = info['backbone']
        if bb['img_size'] is None:
            print(f"NOTE: pos_embed has {bb['num_patches']} patch rows, not a "
                  'square grid: set backbone.img_size to the training crop.')
        else:
            print(f"NOTE: backbone.img_size={bb['img_size']} assumes a "
                  'square training grid (only the pos_embed length is '
                  'stored).')
        if bb['num_heads'] is None:
            print('NOTE: backbone.num_heads is not stored in the weights '
                  f"and {bb['embed_dims']} is not a standard ViT width: set "
                  'it by hand.')
        print('Also required (configs/_base_/models/weaktr-gcd_deit-s16.py): '
              'backbone.patch_bias=True, LayerNorm eps 1e-5, '
              "interpolate_mode='bilinear', final_norm=True, and the "
              "original normalisation ('deit': mean 123.68/116.28/103.53, "
              "std 58.4/57.12/57.38; 'vit': 127.5/127.5).")


if __name__ == '__main__':
    main()
