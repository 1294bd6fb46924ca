# DEPICT entry point: DEPICT-SA on ViT-S/16, ADE20K 512x512, 160k iterations
# (batch 8 = 8 GPUs x 1), Segmenter/DEPICT recipe. Other sizes and the CA
# variant: configs/depict/depict-{sa,ca}_vit-{t,s,b,l}16_8xb1-160k_ade20k-*.py
#   python tools/train.py configs/depict_vit_ade20k.py --cfg-options \
#       model.pretrained=checkpoints/vit_small_p16_384_20220308-410f6037.pth
# Official DEPICT checkpoints: convert with
#   python tools/model_converters/depict2mmseg.py checkpoint.pth depict_s.pth
# and test with `tools/test.py configs/depict_vit_ade20k.py depict_s.pth`.
_base_ = ['./depict/depict-sa_vit-s16_8xb1-160k_ade20k-512x512.py']
