#!/usr/bin/env bash
# Regenerate every figure in results/ on this machine (about 95 minutes on 2 cores).
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
raw=$(mktemp --suffix .json)
.venv/bin/python -m pytest tests/benchmarks --benchmark-only -q -p no:cacheprovider --benchmark-json "$raw"
.venv/bin/python scripts/benchmarks_table.py "$raw" "$OUT" && rm -f "$raw"   # one group per technique
"$FB" data inspect "$sample" --out "$OUT"
"$FB" compare --out "$OUT"
.venv/bin/python scripts/fidelity.py "$OUT"   # every pipeline's PSNR against the written order's reference
.venv/bin/python scripts/antialias_budget.py "$OUT"   # each way to antialias: its cost, ceilings and PSNR (~1 min)
.venv/bin/python scripts/lightning_vs_fit.py "$OUT"   # the Lightning example and training.fit, same settings (~3 min)
.venv/bin/python scripts/resume_timing.py "$OUT"   # a mid-epoch restore against an epoch start and a replay (~8 min)
.venv/bin/python scripts/hpo_sample.py "$OUT"   # the Optuna search of 8 trials, one killed and resumed (~15 min)
"$FB" tune --model resnet18 --device cpu --budget-s 300 --out "$OUT"
"$FB" tune --model resnet18 --device cpu --exhaustive --budget-s 1200 --out "$OUT"   # checks the pick against the grid
.venv/bin/python scripts/ray_vs_dataloader.py 5 "$OUT"   # needs the ray extra (make venv installs it)
.venv/bin/python scripts/verdict_regimes.py "$OUT"   # predicted against measured, sim:R and a CPU model (~20 min)
# Not here: results/gpu/ needs a lent GPU machine (bash scripts/gpu_check.sh there; and
# scripts/executors_e2e.py for threads against processes on a many-core host).
