#!/usr/bin/env bash
# 5-fold cross-validation of UltraScanNet and the two baselines on one GPU, all runs at once
# (the models are small: running them side by side keeps the GPU busy), plus the final model on
# every image. Same folds, epochs and recipe for every model.
#
#   scripts/busi_crossval.sh DATA SPLIT OUT EPOCHS WARMUP COOLDOWN [MODELS] [FOLDS]
#   e.g. scripts/busi_crossval.sh ../shared/data/busi splits/busi_5fold.json runs/cv 150 20 10
set -euo pipefail
DATA=$1; SPLIT=$2; OUT=$3; EPOCHS=$4; WARMUP=$5; COOLDOWN=$6
MODELS=${7:-"ultrascannet resnet50 convnext_tiny"}
FOLDS=${8:-"0 1 2 3 4 all"}
EXTRA=${EXTRA:-}
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD:$PWD/UltraScanClassifier:$PWD/SlicerAICommon:$PWD/kernels${PYTHONPATH:+:$PYTHONPATH}"
pids=()
for m in $MODELS; do
  for f in $FOLDS; do
    [ "$f" = all ] && [ "$m" != ultrascannet ] && continue   # the shipped model only
    d="$OUT/$m/fold$f"; mkdir -p "$d"
    OMP_NUM_THREADS=1 python -m training.ultrascan.train --data "$DATA" --split "$SPLIT" --fold "$f" \
      --model "$m" --out "$d" --epochs "$EPOCHS" --warmup-epochs "$WARMUP" --cooldown-epochs "$COOLDOWN" $EXTRA \
      > "$d/log.txt" 2>&1 &
    pids+=($!)
  done
done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=1; done
exit $rc
