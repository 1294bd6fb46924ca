# TS-CAM trained from scratch on the built-in SynthShapes dataset (image-level
# labels only). Tiny ViT (128-d, 4 layers, patch 8) that trains in minutes on
# 2 CPU cores. SynthShapes images have 1-3 classes: multi-label loss.
# Mostly a pipeline smoke test: from scratch, TS-CAM's semantic maps do not
# localise; its CAMs reach 19.3 mIoU vs 14.5 all-background on the demo data
# and do not beat it with 400 training images (README, "TS-CAM", "Synthetic
# run"). With one object per image (TS-CAM's WSOL setting) it localises:
# tscam_vit-t8_1xb16-2k_synthshapes-1obj-96x96.py, 42.7 vs 15.6.
_base_ = [
    '../_base_/models/tscam_deit-s16.py',
    '../_base_/datasets/synthshapes_cls.py', '../_base_/default_runtime.py',
    '../_base_/schedules/synth_2k.py'
]
num_classes = 5
model = dict(
    data_preprocessor=dict(size=(96, 96), test_cfg=dict(size_divisor=8)),
    backbone=dict(
        img_size=96, patch_size=8, embed_dims=128, num_layers=4,
        num_heads=4, drop_path_rate=0.0,
        # 96 x 96 is the stored grid (no resize); other sizes (--tta
        # scales) need the wsss_zoo bicubic resize
        pos_embed_resize='bicubic'),
    cam_head=dict(num_classes=num_classes, in_channels=128, cam_layers=None),
    test_cfg=dict(bg_thresh=0.4))
train_dataloader = dict(batch_size=16)
optim_wrapper = dict(optimizer=dict(lr=5e-4, weight_decay=0.05))
