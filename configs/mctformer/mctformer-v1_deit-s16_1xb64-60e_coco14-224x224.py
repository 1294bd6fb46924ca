_base_ = ['./mctformer-v2_deit-s16_1xb64-60e_coco14-224x224.py']
model = dict(
    backbone=dict(type='MCTformerV1'),
    cam_head=dict(version='v1', cam_mode='mct'))
