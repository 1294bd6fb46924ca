# TS-CAM on DeiT-S/16 (vasgaowei/TS-CAM, ICCV 2021): one class token, final
# LayerNorm applied, 3x3 conv semantic maps on the patch grid, CAM = class-
# token attention summed over ALL layers x semantic maps.
# Pretrained DeiT-S weights are a LOCAL file (no download), e.g.
#   backbone=dict(pretrained='checkpoints/deit_small_patch16_224-cd65a155.pth')
# (head / head_dist dropped, everything else loaded, as deit_tscam_small).
num_classes = 20
data_preprocessor = dict(
    type='CAMDataPreProcessor',
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    bgr_to_rgb=True,
    pad_val=0,
    seg_pad_val=255,
    size=(224, 224),
    test_cfg=dict(size_divisor=16))
model = dict(
    type='CAMSegmentor',
    data_preprocessor=data_preprocessor,
    backbone=dict(
        type='DeiTCAM',
        img_size=224,
        patch_size=16,
        embed_dims=384,
        num_layers=12,
        num_heads=6,
        mlp_ratio=4,
        qkv_bias=True,
        drop_rate=0.0,
        attn_drop_rate=0.0,
        drop_path_rate=0.1,  # train_cam.py argparse default
        # the original asserts img_size inputs and never resizes pos_embed
        pos_embed_resize=None,
        pretrained=None),
    cam_head=dict(
        type='TSCAMHead',
        num_classes=num_classes,
        in_channels=384,
        cam_layers=None,  # all layers, as the original
        # the original is single-label CE; VOC / COCO images have several
        # labels, so multi-label soft margin (wsss_zoo adaptation)
        loss_type='multilabel'),
    background_index=0,
    test_cfg=dict(bg_thresh=0.4, label_source='gt'))
tta_model = dict(type='CAMTTAModel')
