# WeakTr stage 1 trained from scratch on the built-in SynthShapes dataset
# (image-level labels only). Tiny ViT (128-d, 4 layers, 4 heads, patch 8)
# that trains in minutes on 2 CPU cores; the AAF fuses all 4 x 4 maps and
# training uses the three original losses. CAMs are the fused CAM
# (CA * coarse) WITHOUT the patch-attention refinement (the original's
# --no-patch-attn-refine): trained from scratch, this tiny ViT's patch
# attention is near-uniform with a few "sink" patches (no ImageNet DeiT
# init), so PA @ CAM points at the sinks. Measured on SynthShapes (400 / 40
# images, 1k iterations): refined 13.6 vs unrefined 34.3 CAM mIoU, all-
# background 14.7 (README, "WeakTr stage 1"). The VOC config keeps it on.
_base_ = [
    '../_base_/models/weaktr_deit-s16.py',
    '../_base_/datasets/synthshapes_cls.py', '../_base_/default_runtime.py',
    '../_base_/schedules/synth_2k.py'
]
num_classes = 5
model = dict(
    data_preprocessor=dict(size=(96, 96), test_cfg=dict(size_divisor=8)),
    backbone=dict(
        img_size=96, patch_size=8, embed_dims=128, num_layers=4,
        num_heads=4, num_classes=num_classes, drop_path_rate=0.0),
    cam_head=dict(
        num_classes=num_classes, in_channels=128, num_layers=4, num_heads=4,
        patch_attn_refine=False),
    test_cfg=dict(bg_thresh=0.4))
train_dataloader = dict(batch_size=16)
optim_wrapper = dict(optimizer=dict(lr=1e-3, weight_decay=0.05))
