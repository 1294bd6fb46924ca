# PASCAL VOC 2012 for stage 1 (MCTformer / TS-CAM / TransCAM / WeakTr).
# Layout (mmseg's): data/VOCdevkit/VOC2012/{JPEGImages,SegmentationClassAug,
#   ImageSets/Segmentation/{train,val,aug}.txt} and the original MCTformer
#   label file data/voc12/cls_labels.npy (copy voc12/ of the MCTformer repo,
#   also in this project's shared/data/voc12).
# Training: train_aug (10,582 ids, image-level labels from cls_labels.npy).
# CAM mIoU: VOC train (1,464 images) against SegmentationClassAug, as papers.
dataset_type = 'PascalVOCDataset'
data_root = 'data/VOCdevkit/VOC2012'
cls_label_file = 'data/voc12/cls_labels.npy'
crop_size = (224, 224)
img_norm = dict(
    mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375])
cls_label = dict(type='LoadImageLevelLabelFromFile',
                 label_file=cls_label_file, num_classes=20)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    # DeiT recipe of the original: RandomResizedCrop(224) + flip
    # (+ RandAugment / RandomErasing, not available in mmseg: see README)
    dict(type='RandomResize', scale=(256, 256), ratio_range=(0.5, 2.0),
         keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    cls_label,
    dict(type='PackCAMInputs'),
]
# CAMs at the original resolution (no resize), as generate_attention_maps_ms
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    cls_label,
    dict(type='PackCAMInputs'),
]
cam_scales = [1.0]  # run.sh of MCTformer V1/V2: --scales 1.0 (+ flip)
tta_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(
        type='TestTimeAug',
        transforms=[
            [dict(type='Resize', scale_factor=s, keep_ratio=True,
                  interpolation='bicubic') for s in cam_scales],
            [dict(type='RandomFlip', prob=0., direction='horizontal'),
             dict(type='RandomFlip', prob=1., direction='horizontal')],
            [dict(type='LoadAnnotations')],
            [cls_label],
            [dict(type='PackCAMInputs')],
        ])
]
train_dataloader = dict(
    batch_size=64,
    num_workers=8,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        data_prefix=dict(
            img_path='JPEGImages', seg_map_path='SegmentationClassAug'),
        ann_file='ImageSets/Segmentation/aug.txt',
        pipeline=train_pipeline))
# CAM batches: images are grouped by size inside CAMSegmentor (same CAMs as
# batch_size=1, which the original code uses)
val_dataloader = dict(
    batch_size=8,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        data_prefix=dict(
            img_path='JPEGImages', seg_map_path='SegmentationClassAug'),
        ann_file='ImageSets/Segmentation/train.txt',
        pipeline=test_pipeline))
test_dataloader = val_dataloader
pseudo_label_dataloader = dict(
    batch_size=8,
    num_workers=4,
    persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        data_prefix=dict(
            img_path='JPEGImages', seg_map_path='SegmentationClassAug'),
        ann_file='ImageSets/Segmentation/aug.txt',
        pipeline=test_pipeline))
# MCTformer evaluation.py --curve: t = 0.00 .. 0.59 step 0.01, best t
val_evaluator = dict(
    type='CAMThresholdSweepMetric', thresholds=[i / 100 for i in range(60)],
    greedy=True)
test_evaluator = val_evaluator
