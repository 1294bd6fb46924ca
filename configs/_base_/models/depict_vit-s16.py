# DEPICT (QishuaiWen/DEPICT, NeurIPS 2024) on a ViT-S/16 encoder, hosted as
# mmseg EncoderDecoder(SegmenterVisionTransformer, DEPICTHead): mmseg's ViT
# with Segmenter's attention (wsss_zoo/models/backbones/segmenter_vit.py;
# same keys as mmseg's VisionTransformer). The backbone settings
# reproduce Segmenter's encoder (the host of the original code), so converted
# official checkpoints (tools/model_converters/depict2mmseg.py) load and give
# the original outputs: patch embedding WITH bias, LayerNorm eps 1e-5,
# bilinear position-embedding resizing, final LayerNorm before the decoder.
#
# ImageNet-pretrained encoder: a LOCAL file, never downloaded by the config.
# Segmenter/DEPICT start from the AugReg ViT (i21k -> in1k, 384 px); mmseg
# publishes those weights converted to its keys under
#   https://download.openmmlab.com/mmsegmentation/v0.5/pretrain/segmenter/
# (small: vit_small_p16_384_20220308-410f6037.pth,
#  tiny:  vit_tiny_p16_384_20220308-cce8c795.pth,
#  base:  vit_base_p16_384_20220308-96dfe169.pth,
#  large: vit_large_p16_384_20220308-d4efb41d.pth).
# Download it yourself, e.g. to checkpoints/, and set
# model.pretrained='checkpoints/<file>.pth' (or --cfg-options
# model.pretrained=...). Its 24x24 position embedding is resized bilinearly to
# img_size at load time, as Segmenter does.
norm_cfg = dict(type='LN', eps=1e-5, requires_grad=True)  # Segmenter: 1e-5
data_preprocessor = dict(
    type='SegDataPreProcessor',
    mean=[127.5, 127.5, 127.5],  # Segmenter 'vit' normalisation: 0.5 / 0.5
    std=[127.5, 127.5, 127.5],
    bgr_to_rgb=True,
    pad_val=0,
    seg_pad_val=255,
    size=(512, 512))
model = dict(
    type='EncoderDecoder',
    data_preprocessor=data_preprocessor,
    pretrained=None,  # local path to vit_small_p16_384_*.pth, see above
    backbone=dict(
        type='SegmenterVisionTransformer',
        img_size=(512, 512),
        patch_size=16,
        in_channels=3,
        embed_dims=384,
        num_layers=12,
        num_heads=6,
        mlp_ratio=4,
        out_indices=(11, ),  # last layer only
        qkv_bias=True,
        patch_bias=True,  # mmseg 1.2.2 defaults to False; Segmenter has one
        drop_rate=0.0,
        attn_drop_rate=0.0,
        drop_path_rate=0.1,  # Segmenter's --drop-path default
        with_cls_token=True,
        final_norm=True,
        norm_cfg=norm_cfg,
        act_cfg=dict(type='GELU'),
        interpolate_mode='bilinear'),  # Segmenter resizes bilinearly
    decode_head=dict(
        type='DEPICTHead',
        in_channels=384,
        channels=384,
        embed_dims=384,
        num_classes=150,
        mode='sa',
        num_layers=3,  # DEPICT config.yml: n_layers 3, n_heads 3, dropout 0
        num_heads=3,
        attn_drop_rate=0.0,
        dropout_ratio=0.0,
        patch_size=16,
        norm_cfg=dict(type='LN', eps=1e-5),
        loss_decode=dict(
            type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    train_cfg=dict(),
    # Segmenter evaluates with windows of the crop size, stride crop - 32
    test_cfg=dict(mode='slide', crop_size=(512, 512), stride=(480, 480)))
