#!/usr/bin/env bash
# Regenerate every figure in results/ on this machine (about 50 minutes on 2 cores).
# Run with nothing else busy: the figures are rates, and a shared CPU lowers them.
#   bash scripts/results.sh            (after `make venv`)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
FB=.venv/bin/feedbench
OUT=results
mkdir -p "$OUT"
sample=$(.venv/bin/python -c 'from feeding.sample import ensure_sample; print(ensure_sample())')

for pipeline in pil albumentations; do
    "$FB" --pipeline "$pipeline" --batch 64 --workers 2 --stages --json "$OUT/feed-$pipeline-w2-b64-224x224.json"
done
"$FB" --pipeline dali --batch 64 --workers 2 --json "$OUT/feed-dali-w2-b64-224x224.json"
"$FB" --pipeline dali --batch 64 --workers 8 --json "$OUT/feed-dali-w8-b64-224x224.json"   # = make bench
"$FB" data inspect "$sample" --out "$OUT"
"$FB" compare --out "$OUT"
"$FB" tune --model resnet18 --device cpu --budget-s 300 --out "$OUT"
"$FB" tune --model resnet18 --device cpu --exhaustive --budget-s 1200 --out "$OUT"   # checks the pick against the grid
.venv/bin/python scripts/ray_vs_dataloader.py 5 "$OUT"   # needs the ray extra (make venv installs it)
.venv/bin/python scripts/verdict_regimes.py "$OUT"   # predicted against measured, sim:R and a CPU model (~25 min)
