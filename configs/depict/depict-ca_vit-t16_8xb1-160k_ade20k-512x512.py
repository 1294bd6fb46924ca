# DEPICT-CA: as DEPICT-SA (same encoder, schedule and data), but the class
# embeddings are updated by 3 cross-attention layers from the patch features
# instead of joining the patches' self-attention.
_base_ = './depict-sa_vit-t16_8xb1-160k_ade20k-512x512.py'
model = dict(decode_head=dict(mode='ca'))
