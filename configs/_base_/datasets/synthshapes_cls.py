# SynthShapes for stage 1 (weak supervision): the loss sees only image-level
# labels, derived from the masks after augmentation by AddImageLevelLabel;
# validation measures CAM mIoU against the real masks.
_base_ = ['./synthshapes.py']
num_seg_classes = 6  # background + 5 shapes
cam_label = dict(type='AddImageLevelLabel', num_classes=num_seg_classes,
                 background_index=0)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomFlip', prob=0.5),
    cam_label,
    dict(type='PackCAMInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    cam_label,
    dict(type='PackCAMInputs'),
]
# multi-scale + flip CAMs (tools/test.py --tta, tools/make_pseudo_labels.py)
cam_scales = [1.0, 0.75, 1.25]
tta_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(
        type='TestTimeAug',
        transforms=[
            [dict(type='Resize', scale_factor=s, keep_ratio=True)
             for s in cam_scales],
            [dict(type='RandomFlip', prob=0., direction='horizontal'),
             dict(type='RandomFlip', prob=1., direction='horizontal')],
            [dict(type='LoadAnnotations')],
            [cam_label],
            [dict(type='PackCAMInputs')],
        ])
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
# pseudo labels are made for the training split (with its image labels)
pseudo_label_dataloader = dict(
    batch_size=8,
    num_workers=2,
    persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type='SynthShapesDataset',
        data_root='data/synthshapes',
        data_prefix=dict(
            img_path='JPEGImages', seg_map_path='SegmentationClass'),
        ann_file='ImageSets/Segmentation/train.txt',
        pipeline=test_pipeline))
val_evaluator = dict(_delete_=True, type='CAMThresholdSweepMetric')
test_evaluator = val_evaluator
