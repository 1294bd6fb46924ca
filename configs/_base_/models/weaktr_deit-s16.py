# WeakTr stage 1 on DeiT-S/16 (hustvl/WeakTr, models.py::WeakTr with the V3
# adaptive attention fusion; docs/Training.md: --reduction 8 --pool-type max,
# main.py: --feat-reduction 8, --drop-path 0.1).
# Pretrained DeiT-S weights are a LOCAL file (no download): e.g.
#   checkpoints/deit_small_patch16_224-cd65a155.pth (timm/DeiT release);
# init repeats its class token num_classes times, as the original main.py.
num_classes = 20
data_preprocessor = dict(
    type='CAMDataPreProcessor',  # test batches may mix image sizes
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    bgr_to_rgb=True,
    pad_val=0,
    seg_pad_val=255,
    size=(224, 224),
    # test batches of different-size images are padded to a multiple of 16;
    # CAMSegmentor removes the padding again (CAMs equal one-by-one runs)
    test_cfg=dict(size_divisor=16))
model = dict(
    type='CAMSegmentor',
    data_preprocessor=data_preprocessor,
    backbone=dict(
        type='WeakTrViT',
        img_size=224,
        patch_size=16,
        embed_dims=384,
        num_layers=12,
        num_heads=6,
        mlp_ratio=4,
        qkv_bias=True,
        num_classes=num_classes,
        drop_rate=0.0,
        attn_drop_rate=0.0,
        drop_path_rate=0.1,
        pretrained=None),
    cam_head=dict(
        type='WeakTrHead',
        num_classes=num_classes,
        in_channels=384,
        num_layers=12,
        num_heads=6,
        reduction=8,  # --reduction 8
        feat_reduction=8,  # --feat-reduction 8 (main.py default)
        pool='max',  # --pool-type max
        cam_mode='fused',  # --attention-type fused
        patch_attn_refine=True),  # --patch-attn-refine (default on)
    # no refiner: the patch-attention refinement uses the AAF-weighted
    # attention and lives in WeakTrHead
    background_index=0,
    # pseudo labels: fixed background score 0.43 (evaluation.py --t 43)
    test_cfg=dict(bg_thresh=0.43, label_source='gt'))
tta_model = dict(type='CAMTTAModel')  # tools/test.py --tta: MS+flip CAMs
