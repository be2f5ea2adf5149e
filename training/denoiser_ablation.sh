#!/usr/bin/env bash
# Equal-budget ablation of the denoiser's generator (same CPU minutes, same on-the-fly pairs), then the
# winner (highest mean validation PSNR) keeps training from its checkpoint. Logs: runs/denoiser2/*/log.jsonl;
# table: python training/ablation_report.py. Usage: bash training/denoiser_ablation.sh [CPU_MINUTES_PER_ARM] [CONTINUE_TO]
set -euo pipefail
cd "$(dirname "$0")/.."
BUDGET="${1:-10}"
CONTINUE_TO="${2:-600}"
PY="${PYTHON:-.venv/bin/python}"
export OMP_WAIT_POLICY=PASSIVE
for arm in basicunet_small pix2pix32 basicunet; do
    "$PY" training/train_denoiser.py --name "ablation_$arm" --network "$arm" --cpu-minutes "$BUDGET" --validate-minutes 5
done
WINNER=$("$PY" - <<'PYEOF'
import json, pathlib
best = max(
    (json.loads(p.read_text().splitlines()[-1])["psnr_mean"], p.parent.name.removeprefix("ablation_"))
    for p in pathlib.Path("runs/denoiser2").glob("ablation_*/log.jsonl")
)
print(best[1])
PYEOF
)
echo "winner: $WINNER"
mkdir -p "runs/denoiser2/main_$WINNER"
[ -f "runs/denoiser2/main_$WINNER/checkpoint.pt" ] || cp "runs/denoiser2/ablation_$WINNER/checkpoint.pt" "runs/denoiser2/main_$WINNER/checkpoint.pt"
"$PY" training/train_denoiser.py --name "main_$WINNER" --network "$WINNER" --cpu-minutes "$CONTINUE_TO" --validate-minutes 10
