# MCTformer-V1 on SynthShapes (see the V2 config).
_base_ = ['./mctformer-v2_vit-t8_1xb16-2k_synthshapes-96x96.py']
model = dict(
    backbone=dict(type='MCTformerV1'),
    cam_head=dict(version='v1', cam_mode='mct'))
