"""Convert an original WeakTr checkpoint (stage 1 or stage 2).

    python tools/model_converters/weaktr2wsss.py SRC DST [--stage auto|1|2]
        [--num-heads 6] [--pool max]

SRC is a file saved by hustvl/WeakTr: stage 1 (``main.py``,
``{'model': sd, 'epoch': int[, 'miou': numpy.float64]}``, keys of
``models.py::WeakTr`` with the V3 adaptive attention fusion) or stage 2
(``OnlineRetraining/segm/train.py``, ``encoder.*`` / ``decoder.*``). It is
read with ``weights_only=True`` (numpy scalars allowed, nothing that runs
code). The layout is detected from the keys (``--stage`` forces it):

* stage 1 -> ``wsss_zoo.converters.weaktr.convert_weaktr``: DST gets
  ``{'state_dict', 'meta'}`` with ``CAMSegmentor`` keys (``backbone.*``,
  ``cam_head.*``), ready for ``tools/test.py CONFIG DST``;
* stage 2 -> ``wsss_zoo.converters.weaktr_gcd.convert_weaktr_gcd`` (the
  gradient-clipping decoder port), when that module is installed.

Unknown or missing keys abort with the list.
"""
import argparse
import json
import os.path as osp
import sys

import torch

try:
    import wsss_zoo  # noqa: F401 (checkpoint allow-list, converters)
except ImportError:  # run from a checkout without installation
    sys.path.insert(0, osp.abspath(osp.join(osp.dirname(__file__), '..',
                                            '..')))
    import wsss_zoo  # noqa: F401
from wsss_zoo.compat import load_checkpoint_file
from wsss_zoo.converters.mctformer import unwrap_state_dict
from wsss_zoo.converters.weaktr import (convert_weaktr, is_weaktr_stage1,
                                        weaktr_model_cfg)

STAGE2_HINT = ('stage-2 (Segmenter / gradient-clipping decoder) checkpoints '
               'need wsss_zoo.converters.weaktr_gcd, which could not be '
               'imported')


def detect_stage(sd) -> int:
    """1 for stage-1 keys (AAF), 2 for stage-2 keys (``encoder.`` /
    ``decoder.`` prefixes or a bare decoder's ``cls_emb``); otherwise 1, so
    that the stage-1 converter lists what is missing."""
    if is_weaktr_stage1(sd):
        return 1
    if 'cls_emb' in sd or any(k.startswith(('encoder.', 'decoder.'))
                              for k in sd):
        return 2
    return 1


def _convert_stage2(ckpt):
    """Dispatch to the stage-2 converter; returns (state_dict, meta, cfg)."""
    try:
        from wsss_zoo.converters import weaktr_gcd
    except ImportError as e:
        raise SystemExit(f'{STAGE2_HINT} ({e}); convert stage 2 with its '
                         'own tool or install the full wsss_zoo') from None
    result = weaktr_gcd.convert_weaktr_gcd(ckpt)
    if isinstance(result, dict) and 'state_dict' in result:
        sd, meta = result['state_dict'], result.get('meta', {})
    else:
        sd, meta = result
    hints = getattr(weaktr_gcd, 'config_hints', None)
    return sd, meta, hints(meta) if hints else None


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('src', help='original WeakTr checkpoint (.pth)')
    parser.add_argument('dst', help='output checkpoint for wsss_zoo')
    parser.add_argument(
        '--stage', choices=['auto', '1', '2'], default='auto',
        help='checkpoint layout (default: detected from the keys)')
    parser.add_argument(
        '--num-heads', type=int, default=None,
        help='stage 1: attention heads, checked against the AAF width')
    parser.add_argument(
        '--pool', choices=['max', 'avg'], default='max',
        help="stage 1: AAF pooling for the printed config (not stored in "
        "the weights; 'max' for the released models)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if not osp.isfile(args.src):
        raise FileNotFoundError(f'checkpoint not found: {args.src}')
    ckpt = load_checkpoint_file(args.src, map_location='cpu')
    stage = (detect_stage(unwrap_state_dict(ckpt)) if args.stage == 'auto'
             else int(args.stage))
    if stage == 2:
        sd, meta, cfg = _convert_stage2(ckpt)
        what = 'WeakTr stage 2'
    else:
        result = convert_weaktr(ckpt, num_heads=args.num_heads)
        sd, meta = result['state_dict'], result['meta']
        cfg = weaktr_model_cfg(meta, pool=args.pool)
        what = 'WeakTr stage 1'
    torch.save(dict(state_dict=sd, meta=meta), args.dst)
    print(f'converted {len(sd)} tensors ({what}) -> {args.dst}')
    if cfg is not None:
        print('model config:')
        print(json.dumps(cfg, indent=2, default=str))


if __name__ == '__main__':
    main()
