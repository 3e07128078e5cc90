#!/usr/bin/env bash
# The pneumonia comparison at the study's data scale on CPU: scratch vs autoencoder vs Models
# Genesis pre-training (same fine-tuning budget), and weighted sampler vs class-weighted loss,
# over seeds. Each run is an ordinary `vol-transfer train`; finished runs are skipped, an
# interrupted one resumes. Then `python benchmarks/results/pneumonia_cpu/report.py` writes the tables.
#   bash benchmarks/results/pneumonia_cpu/run.sh [SEEDS...]     (default: 0 1)
set -euo pipefail
cd "$(dirname "$0")/../../.."
VT=${VT:-.venv/bin/vol-transfer}
OUT=${OUT:-runs/pneumonia_cpu}
SEEDS=("${@:-0 1}")
run() {  # name recipe seed [extra --set ...]
  local name=$1 recipe=$2 seed=$3; shift 3
  local dir="$OUT/${name}_s${seed}"
  if [[ -f "$dir/summary.json" && -f "$dir/predictions.csv" ]]; then echo "done: $dir"; return; fi
  local resume=(); [[ -f "$dir/checkpoints/last.pt" ]] && resume=(--resume)
  echo "$(date -u +%H:%M:%S) start $dir"
  "$VT" train "recipes/$recipe" --run-dir "$dir" --no-progress --set "seed=$seed" "$@" "${resume[@]}"
  echo "$(date -u +%H:%M:%S) end $dir"
}
for seed in ${SEEDS[@]}; do
  run scratch pneumonia_scratch_cpu.yaml "$seed"
  run autoencoder pneumonia_autoencoder_cpu.yaml "$seed" --set "pretrain.seed=$seed"
  run genesis pneumonia_genesis_cpu.yaml "$seed" --set "pretrain.seed=$seed"
done
for seed in ${SEEDS[@]}; do
  run scratch_weighted_loss pneumonia_scratch_cpu.yaml "$seed" --set balance=class_weighted_loss
done
