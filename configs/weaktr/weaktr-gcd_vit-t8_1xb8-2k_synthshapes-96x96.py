# WeakTr stage 2 (gradient clipping decoder) on the built-in SynthShapes
# dataset: a tiny ViT + WeakTrGCDHead trained from scratch on PSEUDO masks,
# evaluated against the real val masks; minutes on 2 CPU cores. Make the
# pseudo masks with a stage-1 model first, e.g.
#   python tools/make_pseudo_labels.py \
#     configs/mctformer/mctformer-v2_vit-t8_1xb16-2k_synthshapes-96x96.py \
#     work_dirs/mctformer_v2/iter_2000.pth --out-dir work_dirs/pseudo
# then train with
#   python tools/train.py THIS_CONFIG --cfg-options \
#     pseudo_label_dir=work_dirs/pseudo
# Optional (not in the original, which starts from ImageNet weights): start
# the encoder from the stage-1 ViT, which was trained on the same images with
# image-level labels only,
#   python tools/model_converters/stage1_to_vit.py \
#     work_dirs/weaktr/iter_2000.pth work_dirs/weaktr/vit_init.pth
#   ... --cfg-options model.backbone.init_cfg.type=Pretrained \
#     model.backbone.init_cfg.checkpoint=work_dirs/weaktr/vit_init.pth
# Paper settings scaled to 96x96 crops and 6 classes: 4x4 windows of 24 px
# (480 / 120 in the paper), decoder of 2 layers with embed_dims // 64 heads
# and dropout 0.1. start_value: clipping must not start before the
# foreground is learned. A model that predicts the label frequencies
# everywhere has a batch CE of about the label entropy, 0.41 on WeakTr's
# synthetic pseudo masks (background 91.8 % of the pixels); any start value
# above it switches clipping on while the foreground is still unlearned,
# every foreground pixel is then above its window threshold and gets no
# gradient, and training stays at all background. Measured on those masks
# (README, "WeakTr stage 2", 2k iterations, lr 3e-4, val mIoU): start
# 0.7 -> 14.5 (all background), 0.45 -> 18.0, 0.35 -> 26.0, 0.3 -> 30.2;
# with the stage-1 encoder init 0.7 -> 14.5, 0.35 -> 26.1, 0.3 -> 31.6, and
# plain CE (start_value=0, never clips) 43.7 (31.1 from scratch): on this
# data the clipping costs mIoU at every start value. Deviation: AdamW 3e-4
# (1e-3 stayed at all background with clipping) instead of SGD 1e-4, because
# the encoder starts without ImageNet weights.
_base_ = [
    '../_base_/datasets/synthshapes.py', '../_base_/default_runtime.py',
    '../_base_/schedules/synth_2k.py'
]
pseudo_label_dir = 'work_dirs/pseudo_labels'  # <img_id>.png masks
num_classes = 6
embed_dims = 128
patch_size = 8
data_preprocessor = dict(
    type='SegDataPreProcessor',
    mean=[127.5, 127.5, 127.5],
    std=[127.5, 127.5, 127.5],
    bgr_to_rgb=True,
    pad_val=0,
    seg_pad_val=255,
    size=(96, 96))
model = dict(
    type='EncoderDecoder',
    data_preprocessor=data_preprocessor,
    backbone=dict(
        type='SegmenterVisionTransformer',
        img_size=(96, 96),
        patch_size=patch_size,
        in_channels=3,
        embed_dims=embed_dims,
        num_layers=4,
        num_heads=4,
        mlp_ratio=4,
        out_indices=(3, ),
        qkv_bias=True,
        patch_bias=True,
        drop_rate=0.0,
        attn_drop_rate=0.0,
        drop_path_rate=0.1,
        with_cls_token=True,
        final_norm=True,
        norm_cfg=dict(type='LN', eps=1e-5, requires_grad=True),
        interpolate_mode='bilinear'),
    decode_head=dict(
        type='WeakTrGCDHead',
        in_channels=embed_dims,
        channels=embed_dims,
        embed_dims=embed_dims,
        num_classes=num_classes,
        num_layers=2,
        num_heads=embed_dims // 64,
        mlp_ratio=4,
        drop_rate=0.1,
        attn_drop_rate=0.1,
        drop_path_rate=0.0,
        patch_size=patch_size,
        loss_decode=dict(
            type='GradientClippingLoss', start_value=0.3, window_size=24)),
    test_cfg=dict(mode='whole'))
train_dataloader = dict(
    dataset=dict(
        data_prefix=dict(img_path='JPEGImages',
                         seg_map_path=pseudo_label_dir)))
optim_wrapper = dict(optimizer=dict(lr=3e-4))
