# MCTformer V1/V2 training schedule (main.py defaults of the original):
# AdamW, lr 5e-4 * batch 64 / 512 = 6.25e-5, wd 0.05, eps 1e-8, no decay on
# norms, biases, pos_embed and cls_token; 5 warm-up epochs from 1e-6, then
# cosine to 1e-5; 60 epochs.
optimizer = dict(
    type='AdamW', lr=6.25e-5, betas=(0.9, 0.999), eps=1e-8,
    weight_decay=0.05)
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
    dict(type='LinearLR', start_factor=1e-6 / 6.25e-5, by_epoch=True,
         begin=0, end=5),
    dict(type='CosineAnnealingLR', T_max=55, eta_min=1e-5, by_epoch=True,
         begin=5, end=60),
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
randomness = dict(seed=0)
