# WeakTr stage 2 on PASCAL VOC 2012 (paper setting, docs/Training.md
# "Phase 2: Online Retraining"): Segmenter DeiT-S/16 + 2-layer mask
# transformer trained with the gradient-clipping CE (start value 1.2, 120 px
# windows = 4x4 per 480 crop) on the stage-1 pseudo masks of train_aug,
# evaluated on VOC val against the real masks.
#   python tools/train.py THIS_CONFIG --cfg-options \
#       pseudo_label_dir=work_dirs/weaktr/pseudo_labels \
#       model.pretrained=checkpoints/deit-s16_mmseg.pth
# pseudo_label_dir: one `<img_id>.png` per train_aug image (class indices,
# 255 = ignore), e.g. WeakTr's WeakTr_CAMlb_wCRF folder or the output of
# tools/make_pseudo_labels.py / tools/test.py --out.
_base_ = [
    '../_base_/models/weaktr-gcd_deit-s16.py',
    '../_base_/datasets/voc12aug_pseudo.py', '../_base_/default_runtime.py'
]
pseudo_label_dir = 'work_dirs/pseudo_labels/voc12aug'
crop_size = (480, 480)
# segm/data/config/pascal_voc.py as updated by segm/data/base.py
# (im_size 520, max_ratio 8, crop 480)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(
        type='RandomResize',
        scale=(4160, 520),
        ratio_range=(0.5, 2.0),
        keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs'),  # padding to 480 (seg 255): preprocessor
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(4160, 520), keep_ratio=True),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(
    batch_size=4,  # world batch 4 on one GPU (dist_train.sh 1)
    num_workers=4,
    dataset=dict(
        data_prefix=dict(img_path='JPEGImages',
                         seg_map_path=pseudo_label_dir),
        pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
# SGD (nesterov, momentum 0.9, no weight decay), lr 1e-4 for the decoder and
# 0.1x for the encoder (--enc-lr 0.1, LayerDecayValueAssigner: every encoder
# parameter), polynomial decay (power 0.9) per iteration to min_lr 1e-5,
# applied before the 0.1 scale (so the encoder ends at 1e-6): PolyLRRatio
# with eta_min_ratio 0.1 does exactly that per parameter group.
optimizer = dict(
    type='SGD', lr=1e-4, momentum=0.9, nesterov=True, weight_decay=0.0)
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=optimizer,
    clip_grad=None,
    paramwise_cfg=dict(custom_keys={'backbone': dict(lr_mult=0.1)}))
# 100 epochs of train_aug (10,582 images) at batch 4: 2,646 it/epoch
max_iters = 264600
param_scheduler = [
    dict(
        type='PolyLRRatio',
        eta_min_ratio=0.1,
        power=0.9,
        begin=0,
        end=max_iters,
        by_epoch=False)
]
train_cfg = dict(
    type='IterBasedTrainLoop', max_iters=max_iters,
    val_interval=21168)  # config.yml pascal_voc eval_freq: 8 epochs
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(
        type='CheckpointHook', by_epoch=False, interval=21168,
        save_best='mIoU', max_keep_ckpts=2),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='SegVisualizationHook'))
