#!/usr/bin/env bash
# The main job, from a fresh checkout to a trained and evaluated network on the CPU:
#   1. install everything (scripts/install.sh; quick when already installed),
#   2. generate the synthetic street scenes into datasets/synthetic, unless
#      $DETECTRON2_DATASETS/cityscapes already exists (then that dataset is used),
#   3. evaluate the untrained network (the baseline),
#   4. train configs/Synthetic/Dynamic-Tiny.yaml (it is evaluated at the end of training),
#   5. print mIoU and GFLOPs of both, and fail unless training beat the baseline.
#
# Extra arguments are config overrides for the training run, e.g.
#   bash scripts/run_main_job.sh SOLVER.MAX_ITER 600
#
# Environment variables:
#   DETECTRON2_DATASETS   dataset root holding cityscapes/ (default: generated data)
#   MAIN_JOB_CONFIG       config file (default configs/Synthetic/Dynamic-Tiny.yaml)
#   MAIN_JOB_OUTPUT       output folder (default output/main_job); its train/ and untrained/
#                         subfolders are replaced on every run
#   OMP_NUM_THREADS       math threads per process (default 1: with other work on the same
#                         cores, more threads than free cores slow training down many times)
#   DYN_SEG_VENV, ...     see scripts/install.sh
set -euo pipefail

# shellcheck source=scripts/_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
cd "$REPO_ROOT"

log() { printf '[main-job] %s\n' "$*" >&2; }
start_s=$SECONDS

bash scripts/install.sh
PY="$VENV/bin/python"
install_s=$((SECONDS - start_s))

if [[ -n "${DETECTRON2_DATASETS:-}" && -d "$DETECTRON2_DATASETS/cityscapes" ]]; then
    data_kind="existing"
    log "using the dataset in $DETECTRON2_DATASETS/cityscapes"
else
    data_kind="synthetic"
    log "generating synthetic street scenes into datasets/synthetic"
    DETECTRON2_DATASETS="$("$PY" datasets/generate_synthetic_cityscapes.py \
        --root datasets/synthetic --no-progress)"
fi
export DETECTRON2_DATASETS
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"

CONFIG="${MAIN_JOB_CONFIG:-configs/Synthetic/Dynamic-Tiny.yaml}"
OUT="${MAIN_JOB_OUTPUT:-output/main_job}"
rm -rf "$OUT/train" "$OUT/untrained"
mkdir -p "$OUT"

log "evaluating the untrained network (baseline)"
"$PY" train_net.py --config-file "$CONFIG" --eval-only --allow-partial-weights \
    OUTPUT_DIR "$OUT/untrained" SEED 0 MODEL.WEIGHTS "" > "$OUT/untrained.log" 2>&1 \
    || { tail -n 40 "$OUT/untrained.log" >&2; exit 1; }

log "training $CONFIG (log: $OUT/train.log)"
train_start_s=$SECONDS
"$PY" train_net.py --config-file "$CONFIG" OUTPUT_DIR "$OUT/train" SEED 0 "$@" 2>&1 \
    | tee "$OUT/train.log" | grep --line-buffered -E "eta:|dyn_seg.evaluation" >&2 \
    || true
[[ -f "$OUT/train/eval_results.json" ]] \
    || { tail -n 40 "$OUT/train.log" >&2; log "training failed"; exit 1; }
train_s=$((SECONDS - train_start_s))

"$PY" - "$OUT" "$CONFIG" "$DETECTRON2_DATASETS" "$data_kind" \
    "$install_s" "$train_s" "$((SECONDS - start_s))" <<'PY'
import json
import sys

out, config, data, kind, install_s, train_s, total_s = sys.argv[1:]


def results(name):
    with open(f"{out}/{name}/eval_results.json") as f:
        return json.load(f)


def minutes(seconds):
    seconds = int(seconds)
    return f"{seconds // 60} min {seconds % 60:02d} s"


trained, untrained = results("train"), results("untrained")
after, before = trained["sem_seg"]["mIoU"], untrained["sem_seg"]["mIoU"]
routing = trained.get("routing", {})
print("=" * 64)
print(f"config          {config}")
print(f"data            {data}/cityscapes ({kind})")
print(f"mIoU untrained  {before:6.2f}")
print(f"mIoU trained    {after:6.2f}   ({after - before:+.2f})")
if "GFLOPs_real" in routing:
    print(f"real GFLOPs     {routing['GFLOPs_real']:.4f} per image "
          f"(min {routing['GFLOPs_real_min']:.4f}, max {routing['GFLOPs_real_max']:.4f})")
    print(f"expected GFLOPs {routing['GFLOPs_expected']:.4f} per image (cells only)")
    print(f"gates open      {routing['gates_open_pct']:.1f}%")
print(f"runtime         {minutes(total_s)} (install {minutes(install_s)}, "
      f"training + evaluation {minutes(train_s)})")
print(f"weights         {out}/train/model_final.pth")
print("=" * 64)
if not after > before:
    sys.exit(f"the trained mIoU ({after:.2f}) is not above the untrained one ({before:.2f})")
PY
