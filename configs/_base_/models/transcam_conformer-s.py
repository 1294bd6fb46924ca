# TransCAM (liruiwen/TransCAM, network/conformer_CAM.py::Net_sm): Conformer-S
# (channel ratio 4, 384-d, 12 blocks, 6 heads, drop path 0.1) with the last
# fusion at stride 1; CNN-branch CAM (3x3 conv, 20 classes + the original's
# never-trained slot 0) refined by the head-averaged attention summed over
# all 12 blocks (method 'transcam').
# ImageNet Conformer-S weights are a LOCAL file (no download), e.g.
#   backbone=dict(pretrained='checkpoints/Conformer_small_patch16.pth')
# (pengzhiliang/Conformer release); its classifier keys are deleted, as
# train_TransCAM.py does.
num_classes = 20
data_preprocessor = dict(
    type='CAMDataPreProcessor',  # test batches may mix image sizes
    mean=[123.675, 116.28, 103.53],  # ImageNet mean / std (imutils)
    std=[58.395, 57.12, 57.375],
    bgr_to_rgb=True,
    # the original pads crops with 0 AFTER normalisation (imutils.RandomCrop)
    pad_val=0,
    seg_pad_val=255,
    size=(512, 512),
    # the Conformer needs H, W multiples of 16
    test_cfg=dict(size_divisor=16))
model = dict(
    type='CAMSegmentor',
    data_preprocessor=data_preprocessor,
    backbone=dict(
        type='Conformer',
        channel_ratio=4,
        embed_dims=384,
        num_layers=12,
        num_heads=6,
        mlp_ratio=4,
        qkv_bias=True,
        drop_rate=0.0,
        attn_drop_rate=0.0,
        drop_path_rate=0.1,
        pretrained=None),
    cam_head=dict(
        type='TransCAMHead',
        num_classes=num_classes,  # foreground; the layers have 21 outputs
        in_channels=1024,  # Conformer-S final CNN width (256 * ratio)
        embed_dims=384),
    refiners=[dict(type='TransCAMRefiner', mode='transcam')],
    background_index=0,
    # infer_aff.py uses a background score of 0.42; CAM mIoU sweeps t
    test_cfg=dict(bg_thresh=0.42, label_source='gt'))
tta_model = dict(type='CAMTTAModel')  # tools/test.py --tta: MS+flip CAMs
