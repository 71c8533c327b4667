#!/usr/bin/env bash
# Every benchmark workload at full (GPU) size on one GPU, and the image loader against the model
# (bench/image_pipeline.py), figures as JSON in OUT_DIR.
#   bash bench/gpu.sh [OUT_DIR]
#   PEAK_TFLOPS=790 bash bench/gpu.sh OUT_DIR              # also MFU of chat_sft (790: dense bf16 of the H200 in ASSETS.md)
#   SIZE=cpu SHAPE=tiny STEPS=2 bash bench/gpu.sh OUT_DIR   # the same script at a small size, e.g. on CPU
# Works without a package index: wheels placed in bench/wheels/ (e.g. hydra-core, omegaconf,
# antlr4-python3-runtime, made with `pip download -d bench/wheels ...` elsewhere) are installed
# from there only; everything else must already be in the Python environment.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(dirname "$HERE")"
OUT="${1:-$ROOT/bench/results}"
PYTHON="${PYTHON:-python}"
SIZE="${SIZE:-gpu}"
EXTRA=()
[[ -n "${SHAPE:-}" ]] && EXTRA+=(--shape "$SHAPE")
[[ -n "${STEPS:-}" ]] && EXTRA+=(--steps "$STEPS")
[[ -n "${WARMUP:-}" ]] && EXTRA+=(--warmup "$WARMUP")
CHAT_EXTRA=()
[[ -n "${PEAK_TFLOPS:-}" ]] && CHAT_EXTRA+=(--peak-tflops "$PEAK_TFLOPS")  # e.g. 790 on an H200: MFU of chat_sft
mkdir -p "$OUT"
if compgen -G "$HERE/wheels/*.whl" > /dev/null; then
    "$PYTHON" -m pip install --quiet --no-index --no-deps "$HERE"/wheels/*.whl
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
for workload in text_cls overhead chat_sft image_cls audio_cls; do
    more=(${EXTRA[@]+"${EXTRA[@]}"})
    [[ "$workload" == chat_sft ]] && more+=(${CHAT_EXTRA[@]+"${CHAT_EXTRA[@]}"})
    "$PYTHON" "$HERE/compare.py" "$workload" --size "$SIZE" ${more[@]+"${more[@]}"} --json "$OUT/$workload.json"
done
IMAGE_EXTRA=()
[[ "${SHAPE:-}" == tiny ]] && IMAGE_EXTRA+=(--architecture test_resnet --image-size 32 --images 160)
"$PYTHON" "$HERE/image_pipeline.py" --size "$SIZE" ${IMAGE_EXTRA[@]+"${IMAGE_EXTRA[@]}"} --json "$OUT/image_pipeline.json"
echo "figures written to $OUT"
