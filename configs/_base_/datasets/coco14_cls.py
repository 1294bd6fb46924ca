# MS-COCO 2014 for stage 1 (80 object classes + background), as MCTformer's
# run_coco.sh. Layout: data/coco2014/{train2014,val2014}/*.jpg,
#   data/coco2014/SegmentationClass/{train2014,val2014}/*.png (81-class masks
#   made from the instance annotations, 0 = background, 255 = ignore),
#   data/coco2014/{train_id.txt,val_id.txt} (MCTformer's coco/ lists) and
#   data/coco2014/cls_labels_coco.npy (MCTformer's COCO label dict).
coco_classes = (
    'background', 'person', 'bicycle', 'car', 'motorcycle', 'airplane', 'bus',
    'train', 'truck', 'boat', 'traffic light', 'fire hydrant', 'stop sign',
    'parking meter', 'bench', 'bird', 'cat', 'dog', 'horse', 'sheep', 'cow',
    'elephant', 'bear', 'zebra', 'giraffe', 'backpack', 'umbrella', 'handbag',
    'tie', 'suitcase', 'frisbee', 'skis', 'snowboard', 'sports ball', 'kite',
    'baseball bat', 'baseball glove', 'skateboard', 'surfboard',
    'tennis racket', 'bottle', 'wine glass', 'cup', 'fork', 'knife', 'spoon',
    'bowl', 'banana', 'apple', 'sandwich', 'orange', 'broccoli', 'carrot',
    'hot dog', 'pizza', 'donut', 'cake', 'chair', 'couch', 'potted plant',
    'bed', 'dining table', 'toilet', 'tv', 'laptop', 'mouse', 'remote',
    'keyboard', 'cell phone', 'microwave', 'oven', 'toaster', 'sink',
    'refrigerator', 'book', 'clock', 'vase', 'scissors', 'teddy bear',
    'hair drier', 'toothbrush')
dataset_type = 'BaseSegDataset'
data_root = 'data/coco2014'
crop_size = (224, 224)
cls_label = dict(type='LoadImageLevelLabelFromFile',
                 label_file='data/coco2014/cls_labels_coco.npy',
                 num_classes=80)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomResize', scale=(256, 256), ratio_range=(0.5, 2.0),
         keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    cls_label,
    dict(type='PackCAMInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    cls_label,
    dict(type='PackCAMInputs'),
]
cam_scales = [1.0]
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
_coco = dict(type=dataset_type, data_root=data_root,
             metainfo=dict(classes=coco_classes), img_suffix='.jpg',
             seg_map_suffix='.png')


def _loader(split, pipeline, batch_size, shuffle):
    return dict(
        batch_size=batch_size,
        num_workers=8 if shuffle else 4,
        persistent_workers=shuffle,
        sampler=dict(type='DefaultSampler', shuffle=shuffle),
        dataset=dict(
            data_prefix=dict(img_path=split,
                             seg_map_path='SegmentationClass/' + split),
            ann_file=split.replace('2014', '') + '_id.txt',
            pipeline=pipeline, **_coco))


train_dataloader = _loader('train2014', train_pipeline, 64, True)
val_dataloader = _loader('val2014', test_pipeline, 8, False)
test_dataloader = val_dataloader
pseudo_label_dataloader = _loader('train2014', test_pipeline, 8, False)
val_evaluator = dict(
    type='CAMThresholdSweepMetric', thresholds=[i / 100 for i in range(60)],
    greedy=True)
test_evaluator = val_evaluator
