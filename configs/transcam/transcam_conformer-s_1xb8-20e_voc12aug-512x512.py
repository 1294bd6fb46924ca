# TransCAM, Conformer-S, VOC12 train_aug image-level labels, 512 crops,
# batch 8, 20 epochs, AdamW lr 5e-5 (train_TransCAM.py). CAMs: squares
# 256 / 512 / 768 + flips (infer_TransCAM.py): tools/test.py --tta.
# Reported: 64.9 CAM mIoU on VOC train (released weights, best threshold).
_base_ = [
    '../_base_/models/transcam_conformer-s.py',
    '../_base_/datasets/voc12_cls.py', '../_base_/default_runtime.py',
    '../_base_/schedules/transcam_20e.py'
]
crop_size = (512, 512)
cls_label = dict(type='LoadImageLevelLabelFromFile',
                 label_file='data/voc12/cls_labels.npy', num_classes=20)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    # imutils.RandomResizeLong(320, 640): long side uniform in [320, 640],
    # aspect kept, PIL bicubic (target (s, s), s = 640 * r, keep_ratio)
    dict(type='RandomResize', scale=(640, 640), ratio_range=(0.5, 1.0),
         keep_ratio=True, interpolation='bicubic', backend='pillow'),
    dict(type='RandomFlip', prob=0.5),
    # stands in for torchvision ColorJitter(0.3, 0.3, 0.3, 0.1): same
    # ranges (hue 0.1 of the circle = 18 OpenCV units; brightness +-0.3 of
    # mid-grey ~ +-38), but mmseg applies each with p 0.5 and brightness is
    # additive (see README, "TransCAM")
    dict(type='PhotoMetricDistortion', brightness_delta=38,
         contrast_range=(0.7, 1.3), saturation_range=(0.7, 1.3),
         hue_delta=18),
    # crop <= 512; the data preprocessor pads to 512 with 0 after
    # normalisation (the original pads at a random offset, here bottom-right)
    dict(type='RandomCrop', crop_size=crop_size),
    cls_label,
    dict(type='PackCAMInputs'),
]
# single-scale CAMs: the 512 square (infer_TransCAM.py resizes to squares,
# aspect not kept); CAMs are resized back to the image
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=crop_size, keep_ratio=False,
         interpolation='bicubic', backend='pillow'),
    dict(type='LoadAnnotations'),
    cls_label,
    dict(type='PackCAMInputs'),
]
cam_sizes = [256, 512, 768]  # VOC12ClsDatasetMSF
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
            [cls_label],
            [dict(type='PackCAMInputs')],
        ])
]
train_dataloader = dict(
    batch_size=8, drop_last=True, dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
pseudo_label_dataloader = dict(dataset=dict(pipeline=test_pipeline))
