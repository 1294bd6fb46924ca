# Runtime shared by every wsss_zoo config (mmseg 1.x conventions).
custom_imports = dict(imports=['wsss_zoo'], allow_failed_imports=False)
default_scope = 'mmseg'
env_cfg = dict(
    cudnn_benchmark=True,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    dist_cfg=dict(backend='nccl'),  # tools/*.py switch to gloo on CPU
)
vis_backends = [dict(type='LocalVisBackend')]
visualizer = dict(
    type='SegLocalVisualizer', vis_backends=vis_backends, name='visualizer')
log_processor = dict(by_epoch=False)
log_level = 'INFO'
load_from = None
resume = False
# stop at the first NaN/Inf loss, naming the iteration (wsss_zoo/engine/hooks)
custom_hooks = [dict(type='FiniteLossHook')]
