# DEPICT-SA, ViT-T/16 (width 192, 3 heads), ADE20K 512x512, 160k.
_base_ = './depict-sa_vit-s16_8xb1-160k_ade20k-512x512.py'
model = dict(
    pretrained=None,  # local vit_tiny_p16_384_20220308-cce8c795.pth
    backbone=dict(embed_dims=192, num_heads=3),
    decode_head=dict(in_channels=192, channels=192, embed_dims=192))
