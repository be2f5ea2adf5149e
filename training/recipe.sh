#!/usr/bin/env bash
# The full simulator-then-denoiser recipe, CPU only, resumable: re-running it skips finished stages and
# resumes interrupted training from the last checkpoint.
#
#   bash training/recipe.sh [DATA_DIR]        (default: data/)
#
# Stages: 1 datasets (usdespeckle prepare-data), 2 the simulator (train.json with the override
# train_simulator.json stacked on it), 3 the denoiser's MRI pairs rendered by the simulator,
# 4 the denoiser (train.json), 5 TorchScript and ONNX exports and checksums in metadata.json.
# A model's stage is skipped when its shipped weights exist (models/simulator.pt, models/model.pt,
# both written when its training completes): delete them to retrain. Like pix2pix, each model ships
# its generator after the last epoch (the end of the learning-rate decay); the one with the best
# validation PSNR is kept beside it as simulator_best.pt / model_best.pt.
# Sizes, epochs and learning rates are the configs' values; override them by appending
# "--key value" pairs to the monai.bundle lines below.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-data}
PY=${PYTHON:-.venv/bin/python}
BUNDLE=monai_bundle
LOG=${LOG:-training/logs}
mkdir -p "$LOG"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
stamp() { date -u +%FT%TZ; }

echo "$(stamp) stage 1: datasets in $DATA"
$PY -m usdespeckle prepare-data "$DATA" --seed 0

if [ ! -f "$BUNDLE/models/simulator.pt" ]; then
  echo "$(stamp) stage 2: simulator"
  $PY -m monai.bundle run training --bundle_root "$BUNDLE" \
    --config_file "['$BUNDLE/configs/train.json','$BUNDLE/configs/train_simulator.json']" \
    --dataset_dir "$DATA" 2>&1 | tee -a "$LOG/simulator.log"
fi

if [ ! -f "$DATA/datalist_mri_pairs.json" ] || [ "$BUNDLE/models/simulator.pt" -nt "$DATA/datalist_mri_pairs.json" ]; then
  echo "$(stamp) stage 3: MRI pairs"
  $PY training/make_mri_pairs.py --data "$DATA" --bundle_root "$BUNDLE"
fi

if [ ! -f "$BUNDLE/models/model.pt" ]; then
  echo "$(stamp) stage 4: denoiser"
  $PY -m monai.bundle run training --bundle_root "$BUNDLE" \
    --config_file "$BUNDLE/configs/train.json" --dataset_dir "$DATA" 2>&1 | tee -a "$LOG/denoiser.log"
fi

echo "$(stamp) stage 5: exports and checksums"
$PY training/export_bundle.py --bundle_root "$BUNDLE"
echo "$(stamp) done"
