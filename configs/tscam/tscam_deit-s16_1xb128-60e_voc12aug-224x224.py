# TS-CAM, DeiT-S/16, VOC12 train_aug image-level labels (wsss_zoo setting:
# the original is a WSOL method with no VOC pipeline). Kept from the
# original: model, CUB recipe (AdamW 5e-5, batch 128, 60 epochs, x0.1 at
# epochs 30 / 60), Resize(256, 256) -> RandomCrop(224) -> flip training
# augmentation and Resize(224, 224) test transform (CAMs are resized back to
# the image size by CAMSegmentor). Changed: multi-label soft margin loss
# instead of single-label CE; CAM mIoU on VOC train with the MCTformer
# background-threshold sweep.
_base_ = [
    '../_base_/models/tscam_deit-s16.py', '../_base_/datasets/voc12_cls.py',
    '../_base_/default_runtime.py', '../_base_/schedules/tscam_60e.py'
]
crop_size = (224, 224)
cls_label = dict(type='LoadImageLevelLabelFromFile',
                 label_file='data/voc12/cls_labels.npy', num_classes=20)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(256, 256), keep_ratio=False),
    dict(type='RandomCrop', crop_size=crop_size),
    dict(type='RandomFlip', prob=0.5),
    cls_label,
    dict(type='PackCAMInputs'),
]
# the original test transform: Resize((224, 224)); masks stay at full size
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=crop_size, keep_ratio=False),
    dict(type='LoadAnnotations'),
    cls_label,
    dict(type='PackCAMInputs'),
]
tta_pipeline = [  # tools/test.py --tta: 224 x 224 + flip
    dict(type='LoadImageFromFile'),
    dict(
        type='TestTimeAug',
        transforms=[
            [dict(type='Resize', scale=crop_size, keep_ratio=False)],
            [dict(type='RandomFlip', prob=0., direction='horizontal'),
             dict(type='RandomFlip', prob=1., direction='horizontal')],
            [dict(type='LoadAnnotations')],
            [cls_label],
            [dict(type='PackCAMInputs')],
        ])
]
train_dataloader = dict(batch_size=128, dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
pseudo_label_dataloader = dict(dataset=dict(pipeline=test_pipeline))
