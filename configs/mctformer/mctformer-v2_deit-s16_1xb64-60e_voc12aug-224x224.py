# MCTformer-V2, DeiT-S/16, VOC12 train_aug image-level labels, 224 crops,
# batch 64, 60 epochs (paper: 61.7 CAM mIoU on VOC train without PSA).
_base_ = [
    '../_base_/models/mctformer-v2_deit-s16.py',
    '../_base_/datasets/voc12_cls.py', '../_base_/default_runtime.py',
    '../_base_/schedules/mctformer_60e.py'
]
