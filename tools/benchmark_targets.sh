#!/usr/bin/env bash
# Every measurement behind the README's speed targets, in one run, JSON per row.
#
#   bash tools/benchmark_targets.sh OUT_DIR [cuda|cpu] [quick]
#
# cuda (default): the targets' own settings (DeiT-S/16 at 224, batch 256,
#   bf16 autocast; CAMs of 320x480 images, 4 scales + flip; DEPICT-SA ViT-S/16
#   at 512x512), then the CUDA-only tests. One H100/H200 takes a few minutes.
# quick: the tiny SynthShapes configs at small batches: a dry run of this
#   script (checks that every command works; the numbers mean nothing).
# Each benchmark row is written to OUT_DIR/<name>.json and its table to
# OUT_DIR/<name>.txt; OUT_DIR/summary.txt collects the tables. A failing step
# is reported and the script goes on; the exit status is 1 if any failed.
set -uo pipefail
OUT=${1:?usage: bash tools/benchmark_targets.sh OUT_DIR [cuda|cpu] [quick]}
DEVICE=${2:-cuda}
MODE=${3:-full}
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
mkdir -p "$OUT"
failed=0

bench() {  # bench NAME CONFIG ARGS...
    local name=$1 config=$2
    shift 2
    echo "== $name: $config $*" | tee -a "$OUT/summary.txt"
    if PYTHONUNBUFFERED=1 "$PY" tools/benchmark.py "$config" \
            --device "$DEVICE" --out "$OUT/$name.json" "$@" \
            > "$OUT/$name.txt" 2>&1; then
        grep -E '^(\||device|baseline|CAM masks|parameters)' "$OUT/$name.txt" \
            | tee -a "$OUT/summary.txt"
    else
        failed=1
        echo "FAILED (see $OUT/$name.txt)" | tee -a "$OUT/summary.txt"
        tail -n 20 "$OUT/$name.txt"
    fi
}

if [ "$MODE" = quick ]; then
    V1=configs/mctformer/mctformer-v1_vit-t8_1xb16-2k_synthshapes-96x96.py
    V2=configs/mctformer/mctformer-v2_vit-t8_1xb16-2k_synthshapes-96x96.py
    CAMCFG=$V2
    DEPICT=configs/depict/depict-sa_vit-t8_1xb8-2k_synthshapes-96x96.py
    TRAIN=(--batch-size 4 --warmup 1 --iters 1 --repeat 2)
    CAM=(--batch-size 2 --shape 96 96 --warmup 1 --iters 1 --repeat 2)
    HEAD=(--batch-size 2 --shape 96 96 --warmup 1 --iters 1 --repeat 2)
    AMP=()
else
    V1=configs/mctformer/mctformer-v1_deit-s16_1xb64-60e_voc12aug-224x224.py
    V2=configs/mctformer/mctformer-v2_deit-s16_1xb64-60e_voc12aug-224x224.py
    CAMCFG=configs/mctformer/mctformer-v2_deit-s16_ms-cam_voc12aug.py
    DEPICT=configs/depict_vit_ade20k.py
    TRAIN=(--batch-size 256 --warmup 3 --iters 10 --repeat 3)
    CAM=(--batch-size 16 --shape 320 480 --warmup 1 --iters 2 --repeat 3)
    HEAD=(--batch-size 8 --shape 512 512 --warmup 3 --iters 5 --repeat 3)
    AMP=(--amp bf16)
    [ "$DEVICE" = cpu ] && AMP=()
fi

# MCTformer training: >= 1.5x the original-code baseline, peak <= 0.55x
bench train_v2 "$V2" --tasks train "${TRAIN[@]}" "${AMP[@]}"
bench train_v1 "$V1" --tasks train "${TRAIN[@]}" "${AMP[@]}"
# CAM generation, 4 scales + flip: >= 20x the per-image loop, same masks
bench cam_v2 "$CAMCFG" --tasks cam --scales 1.0 0.5 1.5 2.0 --flip \
    "${CAM[@]}" "${AMP[@]}"
# DEPICTHead vs SegmenterMaskTransformerHead at equal width and depth
bench depict "$DEPICT" --tasks train infer head "${HEAD[@]}" "${AMP[@]}"
# the same with torch.compile on the training target
if [ "$MODE" != quick ]; then
    bench train_v2_compile "$V2" --tasks train --compile "${TRAIN[@]}" \
        "${AMP[@]}"
fi

if [ "$DEVICE" = cuda ]; then
    echo "== CUDA-only tests" | tee -a "$OUT/summary.txt"
    if "$PY" -m pytest -q -rs tests/test_mct_models.py -k cuda \
            -p no:cacheprovider > "$OUT/cuda_tests.txt" 2>&1; then
        tail -n 1 "$OUT/cuda_tests.txt" | tee -a "$OUT/summary.txt"
    else
        failed=1
        tail -n 30 "$OUT/cuda_tests.txt" | tee -a "$OUT/summary.txt"
    fi
fi
exit $failed
