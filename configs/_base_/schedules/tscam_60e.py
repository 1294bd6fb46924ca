# TS-CAM training schedule (train_val_cub.sh + configs/CUB/*.yaml + timm
# create_optimizer of the original): AdamW lr 5e-5 (batch 128), wd 0.05,
# eps 1e-8, no decay on 1-D params / biases / pos_embed / cls_token; 60
# epochs, lr x0.1 at the start of (1-based) epochs 30 and 60
# (adjust_learning_rate_normal, LR_STEPS [30]), i.e. 0-based epochs 29, 59.
optimizer = dict(
    type='AdamW', lr=5e-5, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05)
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=optimizer,
    paramwise_cfg=dict(
        norm_decay_mult=0.0,
        bias_decay_mult=0.0,
        custom_keys={
            'pos_embed': dict(decay_mult=0.0),
            'cls_token': dict(decay_mult=0.0),
        }))
param_scheduler = [
    dict(type='MultiStepLR', milestones=[29, 59], gamma=0.1, by_epoch=True,
         begin=0, end=60),
]
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=60, val_interval=60)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=True),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', by_epoch=True, interval=5,
                    max_keep_ckpts=3),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='SegVisualizationHook'))
randomness = dict(seed=26)  # BASIC.SEED of the original yaml
