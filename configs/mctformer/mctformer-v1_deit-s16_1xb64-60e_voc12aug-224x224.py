# MCTformer-V1 (class-to-patch attention of the last 3 layers), DeiT-S/16,
# VOC12 train_aug image-level labels, 224 crops, batch 64, 60 epochs.
_base_ = ['./mctformer-v2_deit-s16_1xb64-60e_voc12aug-224x224.py']
model = dict(
    backbone=dict(type='MCTformerV1'),
    cam_head=dict(version='v1', cam_mode='mct'))
