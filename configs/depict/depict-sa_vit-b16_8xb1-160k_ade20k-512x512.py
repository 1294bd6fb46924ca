# DEPICT-SA, ViT-B/16 (width 768, 12 heads), ADE20K 512x512, 160k.
_base_ = './depict-sa_vit-s16_8xb1-160k_ade20k-512x512.py'
model = dict(
    pretrained=None,  # local vit_base_p16_384_20220308-96dfe169.pth
    backbone=dict(embed_dims=768, num_heads=12),
    decode_head=dict(in_channels=768, channels=768, embed_dims=768))
