# WeakTr stage 1 (CAM), DeiT-S/16 + adaptive attention fusion, VOC12
# train_aug image-level labels, 224 crops, batch 64, 60 epochs
# (hustvl/WeakTr docs/Training.md; README: 69.4 CAM label mIoU on VOC train
# with MS CAMs + CRF, 67.1 without CRF).
#   AdamW, lr 6e-4 * 64 / 512 = 7.5e-5, wd 0.03 (no decay on norms, biases,
#   pos_embed, cls_token), eps 1e-8; 5 warm-up epochs from 1e-6, cosine to
#   1e-5; drop path 0.1; DeiT-S init (class token repeated C times).
# CAMs: scales 1.0 / 1.2 + flip (tools/test.py --tta or
# tools/make_pseudo_labels.py), fused CAM refined by the fused patch
# attention; CAM mIoU on VOC train (1,464) against SegmentationClassAug with
# the background threshold walked up from 0.40 until mIoU stops improving
# (evaluation.py --curve True --start 40); pseudo labels at 0.43.
_base_ = [
    '../_base_/models/weaktr_deit-s16.py', '../_base_/datasets/voc12_cls.py',
    '../_base_/default_runtime.py', '../_base_/schedules/mctformer_60e.py'
]
lr = 6e-4 * 64 / 512
optim_wrapper = dict(optimizer=dict(lr=lr, weight_decay=0.03))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6 / lr, by_epoch=True, begin=0,
         end=5),
    dict(type='CosineAnnealingLR', T_max=55, eta_min=1e-5, by_epoch=True,
         begin=5, end=60),
]
train_dataloader = dict(batch_size=64)
cam_scales = [1.0, 1.2]  # docs/Training.md: --scales 1.0 1.2
_cls_label = {{_base_.cls_label}}
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
            [_cls_label],
            [dict(type='PackCAMInputs')],
        ])
]
# evaluation.py --curve True --start 40 (--end 60): t = 0.40 .. 0.59, stop
# at the first threshold that does not improve the mIoU
val_evaluator = dict(
    type='CAMThresholdSweepMetric',
    thresholds=[i / 100 for i in range(40, 60)],
    greedy=True)
test_evaluator = val_evaluator
