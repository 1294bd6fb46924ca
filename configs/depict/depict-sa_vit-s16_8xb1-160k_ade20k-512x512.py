# DEPICT-SA, ViT-S/16, ADE20K 512x512, 160k iterations at batch 8 (8 GPUs x 1)
# with Segmenter's recipe (DEPICT trains with Segmenter's code): SGD lr 1e-3,
# momentum 0.9, no weight decay, poly decay (power 0.9) to 1e-5, no warm-up.
# Segmenter trains 64 epochs (~161.7k iterations); 160k is mmseg's schedule.
_base_ = [
    '../_base_/models/depict_vit-s16.py', '../_base_/datasets/ade20k.py',
    '../_base_/default_runtime.py', '../_base_/schedules/schedule_160k.py'
]
crop_size = (512, 512)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    pretrained=None,  # local vit_small_p16_384_20220308-410f6037.pth
    backbone=dict(img_size=crop_size),
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(480, 480)))
optimizer = dict(type='SGD', lr=0.001, momentum=0.9, weight_decay=0.0)
optim_wrapper = dict(type='OptimWrapper', optimizer=optimizer, clip_grad=None)
param_scheduler = [
    dict(
        type='PolyLR',
        eta_min=1e-5,
        power=0.9,
        begin=0,
        end=160000,
        by_epoch=False)
]
train_dataloader = dict(batch_size=1)  # 8 GPUs x 1 = Segmenter's batch 8
val_dataloader = dict(batch_size=1)
test_dataloader = val_dataloader
