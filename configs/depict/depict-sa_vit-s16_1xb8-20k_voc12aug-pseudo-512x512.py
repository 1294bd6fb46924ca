# WSSS stage 2 on PASCAL VOC 2012: DEPICT-SA on ViT-S/16 trained on the
# pseudo masks of a stage-1 model (e.g. MCTformer-V2), evaluated on VOC val
# against the real masks. Segmenter/DEPICT optimiser (SGD lr 1e-3, poly) on
# mmseg's VOC 20k schedule, batch 8 on one GPU.
#   python tools/train.py THIS_CONFIG --cfg-options \
#       pseudo_label_dir=work_dirs/pseudo_labels/voc12aug \
#       model.pretrained=checkpoints/vit_small_p16_384_20220308-410f6037.pth
_base_ = [
    '../_base_/models/depict_vit-s16.py', '../_base_/datasets/voc12aug_pseudo.py',
    '../_base_/default_runtime.py', '../_base_/schedules/schedule_160k.py'
]
num_classes = 21
crop_size = (512, 512)
model = dict(
    data_preprocessor=dict(size=crop_size),
    pretrained=None,  # local vit_small_p16_384_20220308-410f6037.pth
    backbone=dict(img_size=crop_size),
    decode_head=dict(num_classes=num_classes),
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(480, 480)))
optimizer = dict(type='SGD', lr=0.001, momentum=0.9, weight_decay=0.0)
optim_wrapper = dict(type='OptimWrapper', optimizer=optimizer, clip_grad=None)
param_scheduler = [
    dict(type='PolyLR', eta_min=1e-5, power=0.9, begin=0, end=20000,
         by_epoch=False)
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=20000,
                 val_interval=2000)
default_hooks = dict(
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=2000))
