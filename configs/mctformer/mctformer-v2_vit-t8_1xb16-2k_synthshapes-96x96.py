# MCTformer-V2 trained from scratch on the built-in SynthShapes dataset
# (image-level labels only). Tiny ViT (128-d, 4 layers, patch 8) so that it
# trains in minutes on 2 CPU cores: the stage 1 of `make demo`.
#
# Two changes from the VOC recipe, both measured on SynthShapes (README,
# "MCTformer V1 / V2 / + (stage 1)", "From scratch on SynthShapes"): without
# ImageNet weights
# 1. random resized crops (25-100 % of the image, the image-level label
#    recomputed from the crop) are what makes the class tokens localise:
#    class-to-patch CAM 41.1 vs 25.4 mIoU (flip only) after 600 iterations;
# 2. the CAM is the class-to-patch attention alone (cam_mode='mct', one of
#    the original V2's --attention-type modes) with no patch-to-patch
#    refinement: the patch affinity of a from-scratch ViT *inverts* the
#    CAMs (refined CAM higher on the background than on the object for
#    100 % of val pairs, 9-12 mIoU, below the all-background 14.7), and the
#    PatchCAM factor of 'fused' is zero (ReLU) on many objects (fused 36.8
#    vs mct 44.1 mIoU at 1k iterations).
# With an ImageNet-pretrained DeiT use the VOC config (fused + refinement).
_base_ = [
    '../_base_/models/mctformer-v2_deit-s16.py',
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
        num_classes=num_classes, in_channels=128, cam_layers=3,
        cam_mode='mct'),
    refiners=[],
    test_cfg=dict(bg_thresh=0.2))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    # zoom 1-2x then a 96x96 crop: crops of 25-100 % of the image area
    dict(type='RandomResize', scale=(96, 96), ratio_range=(1.0, 2.0),
         keep_ratio=True),
    dict(type='RandomCrop', crop_size=(96, 96)),
    dict(type='RandomFlip', prob=0.5),
    {{_base_.cam_label}},  # after the crop: a cropped-out object loses its label
    dict(type='PackCAMInputs'),
]
train_dataloader = dict(batch_size=16, dataset=dict(pipeline=train_pipeline))
optim_wrapper = dict(optimizer=dict(lr=5e-4, weight_decay=0.05))
