# TransCAM trained from scratch on the built-in SynthShapes dataset
# (image-level labels only). Tiny Conformer (CNN widths 16 / 32 / 64, 64-d
# tokens, 6 blocks, 4 heads) that trains in minutes on 2 CPU cores. The
# Conformer's stride is 16: a 96 x 96 image gives a 6 x 6 token grid / CAM.
_base_ = [
    '../_base_/models/transcam_conformer-s.py',
    '../_base_/datasets/synthshapes_cls.py', '../_base_/default_runtime.py',
    '../_base_/schedules/synth_2k.py'
]
num_classes = 5
model = dict(
    data_preprocessor=dict(size=(96, 96), test_cfg=dict(size_divisor=16)),
    backbone=dict(
        channel_ratio=0.25, embed_dims=64, num_layers=6, num_heads=4,
        drop_path_rate=0.0),
    cam_head=dict(num_classes=num_classes, in_channels=64, embed_dims=64),
    test_cfg=dict(bg_thresh=0.4))
train_dataloader = dict(batch_size=16)
optim_wrapper = dict(optimizer=dict(lr=2e-3, weight_decay=5e-4))
# multi-scale + flip CAMs on squares, as infer_TransCAM.py (sizes must be
# multiples of 16): tools/test.py --tta
_cam_label = {{_base_.cam_label}}
cam_sizes = [64, 96, 128]
tta_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(
        type='TestTimeAug',
        transforms=[
            [dict(type='Resize', scale=(s, s), keep_ratio=False,
                  interpolation='bicubic', backend='pillow')
             for s in cam_sizes],
            [dict(type='RandomFlip', prob=0., direction='horizontal'),
             dict(type='RandomFlip', prob=1., direction='horizontal')],
            [dict(type='LoadAnnotations')],
            [_cam_label],
            [dict(type='PackCAMInputs')],
        ])
]
