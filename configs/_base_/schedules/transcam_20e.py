# TransCAM training schedule (train_TransCAM.py defaults): AdamW lr 5e-5,
# weight decay 5e-4 on ALL parameters (no exceptions), eps 1e-8, constant
# learning rate (no warm-up, no decay), 20 epochs.
optimizer = dict(
    type='AdamW', lr=5e-5, betas=(0.9, 0.999), eps=1e-8, weight_decay=5e-4)
optim_wrapper = dict(type='OptimWrapper', optimizer=optimizer)
param_scheduler = []
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=20, val_interval=20)
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
randomness = dict(seed=0)  # the original sets no seed
