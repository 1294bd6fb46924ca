# MCTformer-V2, DeiT-S/16, COCO 2014 image-level labels (80 classes),
# same hyper-parameters as VOC (run_coco.sh); paper: 42.0 seg mIoU on val.
_base_ = [
    '../_base_/models/mctformer-v2_deit-s16.py',
    '../_base_/datasets/coco14_cls.py', '../_base_/default_runtime.py',
    '../_base_/schedules/mctformer_60e.py'
]
num_classes = 80
model = dict(
    backbone=dict(num_classes=num_classes),
    cam_head=dict(num_classes=num_classes))
