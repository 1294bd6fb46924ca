# PASCAL VOC 2012 for WSSS stage 2: train on train_aug (10,582 ids) with the
# PSEUDO masks of a stage-1 model, evaluate on val (1,449) against the real
# SegmentationClass masks. Pseudo masks: one `<img_id>.png` (class indices,
# 255 = ignore) per train_aug image, written by
#   python tools/make_pseudo_labels.py STAGE1_CONFIG CKPT --out-dir DIR
# (or tools/test.py STAGE1_CONFIG CKPT --out DIR on the train_aug split).
# Point the config at them with --cfg-options pseudo_label_dir=DIR.
# Augmentation and 512x512 crops: mmseg's pascal_voc12_aug settings.
dataset_type = 'PascalVOCDataset'
data_root = 'data/VOCdevkit/VOC2012'
pseudo_label_dir = 'work_dirs/pseudo_labels/voc12aug'
crop_size = (512, 512)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomResize', scale=(2048, 512), ratio_range=(0.5, 2.0),
         keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(2048, 512), keep_ratio=True),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(
    batch_size=8,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        data_prefix=dict(img_path='JPEGImages',
                         seg_map_path=pseudo_label_dir),
        ann_file='ImageSets/Segmentation/aug.txt',
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        data_prefix=dict(img_path='JPEGImages',
                         seg_map_path='SegmentationClass'),
        ann_file='ImageSets/Segmentation/val.txt',
        pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU'])
test_evaluator = val_evaluator
