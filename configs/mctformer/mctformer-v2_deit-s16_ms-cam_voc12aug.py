# CAM / pseudo-label generation with 4 scales + flip (IRN/PSA-style
# aggregation) instead of run.sh's single scale; use with
#   tools/make_pseudo_labels.py THIS_CONFIG CKPT --out-dir DIR
# Layer index, fusion mode and refinement are the model's cam_head /
# refiners settings (cam_layers=3, cam_mode='fused', PatchAffinityRefiner).
_base_ = ['./mctformer-v2_deit-s16_1xb64-60e_voc12aug-224x224.py']
cam_scales = [1.0, 0.5, 1.5, 2.0]
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
