# DEPICT-SA on a tiny ViT trained from scratch on the built-in SynthShapes
# dataset: trains in minutes on 2 CPU cores. Stage 2 of `make demo` (then
# train_dataloader.dataset.data_prefix.seg_map_path points at the pseudo
# labels); `python tools/demo.py --depict-only` trains it on the real masks.
_base_ = [
    '../_base_/datasets/synthshapes.py', '../_base_/default_runtime.py',
    '../_base_/schedules/synth_2k.py'
]
num_classes = 6
embed_dims = 128
data_preprocessor = dict(
    type='SegDataPreProcessor',
    mean=[127.5, 127.5, 127.5],
    std=[127.5, 127.5, 127.5],
    bgr_to_rgb=True,
    pad_val=0,
    seg_pad_val=255,
    size=(96, 96))
model = dict(
    type='EncoderDecoder',
    data_preprocessor=data_preprocessor,
    backbone=dict(
        type='SegmenterVisionTransformer',
        img_size=(96, 96),
        patch_size=8,
        in_channels=3,
        embed_dims=embed_dims,
        num_layers=4,
        num_heads=4,
        mlp_ratio=4,
        out_indices=(3, ),
        qkv_bias=True,
        patch_bias=True,
        drop_rate=0.0,
        attn_drop_rate=0.0,
        drop_path_rate=0.0,
        with_cls_token=True,
        final_norm=True,
        norm_cfg=dict(type='LN', eps=1e-5, requires_grad=True),
        interpolate_mode='bilinear'),
    decode_head=dict(
        type='DEPICTHead',
        in_channels=embed_dims,
        channels=embed_dims,
        embed_dims=embed_dims,
        num_classes=num_classes,
        num_layers=2,
        num_heads=2,
        mode='sa',
        patch_size=8,
        dropout_ratio=0.0,
        loss_decode=dict(
            type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    test_cfg=dict(mode='whole'))
