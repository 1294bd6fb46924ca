# MCTformer+ on the built-in SynthShapes dataset (tiny ViT, CPU minutes).
_base_ = ['./mctformer-v2_vit-t8_1xb16-2k_synthshapes-96x96.py']
model = dict(
    backbone=dict(type='MCTformerPlus'),
    cam_head=dict(version='plus', cam_mode='fused', cam_layers=4, num_cct=4))
