# DEPICT-SA, ViT-L/16 (width 1024, 24 layers, 16 heads), ADE20K at 640x640 as
# Segmenter's large models (resize scale (2560, 640), window 640 stride 608).
# The decoder keeps DEPICT config.yml's 3 layers x 3 heads; the paper's L
# model may use a larger decoder (its variant.yml is not published).
_base_ = './depict-sa_vit-s16_8xb1-160k_ade20k-512x512.py'
crop_size = (640, 640)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    pretrained=None,  # local vit_large_p16_384_20220308-d4efb41d.pth
    backbone=dict(
        img_size=crop_size,
        embed_dims=1024,
        num_layers=24,
        num_heads=16,
        out_indices=(23, )),
    decode_head=dict(in_channels=1024, channels=1024, embed_dims=1024),
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(608, 608)))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(
        type='RandomResize',
        scale=(2560, 640),
        ratio_range=(0.5, 2.0),
        keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(2560, 640), keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs')
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
