# Stage 2 of WSSS on SynthShapes: DEPICT-SA trained on the pseudo masks of a
# stage-1 model, evaluated against the real val masks. Make the pseudo masks
# first, e.g.
#   python tools/make_pseudo_labels.py \
#     configs/mctformer/mctformer-v2_vit-t8_1xb16-2k_synthshapes-96x96.py \
#     work_dirs/mctformer_v2/iter_2000.pth --out-dir work_dirs/pseudo
# then train with
#   python tools/train.py THIS_CONFIG --cfg-options \
#     pseudo_label_dir=work_dirs/pseudo
_base_ = ['./depict-sa_vit-t8_1xb8-2k_synthshapes-96x96.py']
pseudo_label_dir = 'work_dirs/pseudo_labels'  # <img_id>.png palette masks
train_dataloader = dict(
    dataset=dict(data_prefix=dict(seg_map_path=pseudo_label_dir)))
