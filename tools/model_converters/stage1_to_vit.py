"""Initial weights for a stage-2 mmseg ViT from a trained stage-1 encoder.

    python tools/model_converters/stage1_to_vit.py SRC DST

SRC: a ``tools/train.py`` checkpoint of a stage-1 ``CAMSegmentor`` with a
ViT encoder (MCTformer V1/V2/+, WeakTr, TS-CAM). DST: ``{'state_dict':
bare VisionTransformer keys, 'meta': ...}`` for
``--cfg-options model.backbone.init_cfg.type=Pretrained
model.backbone.init_cfg.checkpoint=DST`` in a stage-2 config (WeakTr GCD,
DEPICT). The class tokens are averaged into one
(:mod:`wsss_zoo.converters.stage1_encoder`). A wsss_zoo option for runs
without ImageNet weights; the original methods start stage 2 from ImageNet.
SRC is read with ``torch.load(weights_only=True)``.
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

import wsss_zoo  # noqa: E402,F401 (allow-lists mmengine checkpoint types)
from wsss_zoo.converters.stage1_encoder import \
    stage1_encoder_to_vit  # noqa: E402

PROG = 'stage1_to_vit'


def main(argv=None):
    parser = argparse.ArgumentParser(
        description='Stage-1 ViT encoder -> mmseg VisionTransformer '
        'initial weights for stage 2')
    parser.add_argument('src', help='stage-1 checkpoint (tools/train.py)')
    parser.add_argument('dst', help='output .pth (backbone init_cfg)')
    args = parser.parse_args(argv)
    if not osp.isfile(args.src):
        sys.exit(f'{PROG}: no such file: {args.src}')
    try:
        checkpoint = torch.load(args.src, map_location='cpu',
                                weights_only=True)
    except Exception as e:  # noqa: BLE001 (report and stop, never unpickle)
        sys.exit(f'{PROG}: cannot read {args.src} with '
                 f'torch.load(weights_only=True): {e}')
    try:
        state_dict, info = stage1_encoder_to_vit(checkpoint)
    except ValueError as e:
        sys.exit(f'{PROG}: {e}')
    os.makedirs(osp.dirname(osp.abspath(args.dst)), exist_ok=True)
    torch.save(
        dict(state_dict=state_dict,
             meta=dict(converted_from=osp.basename(args.src),
                       converter=f'wsss_zoo tools/model_converters/{PROG}.py',
                       info=info)), args.dst)
    print(f'converted {len(state_dict)} tensors: {args.src} -> {args.dst}')
    pprint.pprint(info, sort_dicts=False)
    print('use: --cfg-options model.backbone.init_cfg.type=Pretrained '
          f'model.backbone.init_cfg.checkpoint={args.dst} (embed_dims, '
          'num_layers and patch_size of the stage-2 backbone must match)')


if __name__ == '__main__':
    main()
