#!/usr/bin/env bash
# Every benchmark workload at full (GPU) size on one GPU, figures as JSON in OUT_DIR.
#   bash bench/gpu.sh [OUT_DIR]
# Works without a package index: wheels placed in bench/wheels/ (e.g. hydra-core, omegaconf,
# antlr4-python3-runtime, made with `pip download -d bench/wheels ...` elsewhere) are installed
# from there only; everything else must already be in the Python environment.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(dirname "$HERE")"
OUT="${1:-$ROOT/bench/results}"
mkdir -p "$OUT"
if compgen -G "$HERE/wheels/*.whl" > /dev/null; then
    python -m pip install --quiet --no-index --no-deps "$HERE"/wheels/*.whl
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
for workload in text_cls overhead; do
    python "$HERE/compare.py" "$workload" --size gpu --json "$OUT/$workload.json"
done
echo "figures written to $OUT"
