# WeakTr stage 2 ("online retraining", hustvl/WeakTr OnlineRetraining/segm):
# Segmenter = DeiT-S/16 encoder + 2-layer mask transformer decoder trained
# with the gradient-clipping CE, hosted as mmseg
# EncoderDecoder(SegmenterVisionTransformer, WeakTrGCDHead): mmseg's ViT with
# Segmenter's attention (wsss_zoo/models/backbones/segmenter_vit.py). The
# backbone settings reproduce Segmenter's encoder, so converted official checkpoints
# (tools/model_converters/weaktr_gcd2mmseg.py) load strictly and give the
# original outputs: patch embedding WITH bias, LayerNorm eps 1e-5, bilinear
# position-embedding resizing, final LayerNorm before the decoder.
#
# ImageNet initialisation (as the original create_vit): DeiT-S,
# deit_small_patch16_224-cd65a155.pth (facebookresearch/deit). A LOCAL file,
# never downloaded by the config: convert it once with
#   python tools/model_converters/weaktr_gcd2mmseg.py \
#       deit_small_patch16_224-cd65a155.pth checkpoints/deit-s16_mmseg.pth
# and set model.pretrained='checkpoints/deit-s16_mmseg.pth'. Its 14x14
# position embedding is resized bilinearly to img_size at load time, as
# Segmenter's checkpoint_filter_fn does.
norm_cfg = dict(type='LN', eps=1e-5, requires_grad=True)  # nn.LayerNorm
data_preprocessor = dict(
    type='SegDataPreProcessor',
    # segm/data/utils.py STATS['deit'] * 255, rounded to 2 decimals
    mean=[123.68, 116.28, 103.53],
    std=[58.4, 57.12, 57.38],
    bgr_to_rgb=True,
    pad_val=0,
    seg_pad_val=255,
    size=(480, 480))
model = dict(
    type='EncoderDecoder',
    data_preprocessor=data_preprocessor,
    pretrained=None,  # local converted DeiT-S checkpoint, see above
    backbone=dict(
        type='SegmenterVisionTransformer',
        img_size=(480, 480),  # the crop: pos_embed (1, 1 + 30 * 30, 384)
        patch_size=16,
        in_channels=3,
        embed_dims=384,
        num_layers=12,
        num_heads=6,
        mlp_ratio=4,
        out_indices=(11, ),
        qkv_bias=True,
        patch_bias=True,  # Segmenter's patch embedding has a bias
        drop_rate=0.0,  # train.py --dropout 0.0
        attn_drop_rate=0.0,
        drop_path_rate=0.1,  # train.py --drop-path 0.1
        with_cls_token=True,
        final_norm=True,
        norm_cfg=norm_cfg,
        act_cfg=dict(type='GELU'),
        interpolate_mode='bilinear'),
    decode_head=dict(
        type='WeakTrGCDHead',
        in_channels=384,
        channels=384,
        embed_dims=384,
        num_classes=21,
        num_layers=2,  # config.yml mask_transformer: n_layers 2
        num_heads=6,  # factory: d_model // 64
        mlp_ratio=4,  # factory: d_ff = 4 * d_model
        drop_rate=0.1,  # config.yml: dropout 0.1
        attn_drop_rate=0.1,
        drop_path_rate=0.0,
        patch_size=16,
        norm_cfg=dict(type='LN', eps=1e-5),
        loss_decode=dict(
            type='GradientClippingLoss',
            start_value=1.2,  # docs/Training.md --start-value 1.2
            window_size=120)),  # --patch-size 120: 4x4 windows per crop
    train_cfg=dict(),
    # segm/engine.py::evaluate: windows of 480, stride 320
    test_cfg=dict(mode='slide', crop_size=(480, 480), stride=(320, 320)))
