# MCTformer+ (TPAMI 2024), DeiT-S/16, VOC12 train_aug image-level labels,
# 448 crops, batch 32, 45 epochs (HEAD main.py / run_mct_plus.sh of
# xulianuwa/MCTformer). CAMs: scales 1.0/0.75/1.25 + flip, all 12 layers,
# patch-affinity refinement. No MCTformer+ weights are released.
_base_ = ['./mctformer-v2_deit-s16_1xb64-60e_voc12aug-224x224.py']
num_classes = 20
crop_size = (448, 448)
model = dict(
    data_preprocessor=dict(size=crop_size),
    # training adds pos_embed_pat unresized: train crops must be 448x448
    backbone=dict(type='MCTformerPlus', img_size=448),
    cam_head=dict(version='plus', cam_mode='fused', cam_layers=12,
                  num_cct=12, decay_parameter=0.996))
_cls_label = {{_base_.cls_label}}
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomResize', scale=(512, 512), ratio_range=(0.5, 2.0),
         keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    _cls_label,
    dict(type='PackCAMInputs'),
]
train_dataloader = dict(batch_size=32, dataset=dict(pipeline=train_pipeline))
cam_scales = [1.0, 0.75, 1.25]
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
# lr = 5e-4 * 32 / 512; timm's no-weight-decay list matches names exactly,
# so pos_embed_cls / pos_embed_pat DO get weight decay in the original
optim_wrapper = dict(
    optimizer=dict(lr=3.125e-5),
    paramwise_cfg=dict(
        _delete_=True,
        norm_decay_mult=0.0,
        bias_decay_mult=0.0,
        custom_keys={'cls_token': dict(decay_mult=0.0)}))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6 / 3.125e-5, by_epoch=True,
         begin=0, end=5),
    dict(type='CosineAnnealingLR', T_max=40, eta_min=1e-5, by_epoch=True,
         begin=5, end=45),
]
train_cfg = dict(max_epochs=45, val_interval=45)
