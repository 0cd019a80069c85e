#!/usr/bin/env bash
# The GPU check: install from prepared wheels, run the CUDA tests, benchmark inference and
# training, and write OUTDIR/gpu_check.json + OUTDIR/gpu_check.md. Every part is time-boxed;
# a part that runs out of time is reported as such. Total budget: GPU_CHECK_BUDGET_S (480).
#
#   On a machine with network (once):  bash scripts/prepare_gpu_wheels.sh   # fills .whl/
#   On the GPU machine (no network):   bash scripts/gpu_check.sh OUTDIR
#
# GPU_CHECK_SMOKE=1 runs every part at toy sizes on whatever device there is (a check of
# this script itself, e.g. on a CPU machine).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT="${1:?usage: bash scripts/gpu_check.sh OUTDIR}"
mkdir -p "$OUT/parts"
BUDGET="${GPU_CHECK_BUDGET_S:-480}"
START=$(date +%s)
PY="${PYTHON:-python3}"

if [[ -d .whl ]] && ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target .site .whl/*.whl >"$OUT/parts/install.log" 2>&1 \
        || { echo "wheel install failed: see $OUT/parts/install.log"; exit 1; }
    export PYTHONPATH="$PWD/.site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONWARNINGS="ignore::FutureWarning"

left() { echo $((BUDGET - ($(date +%s) - START))); }

# run_part NAME SECONDS CMD...: run CMD with at most SECONDS (or what is left of the budget,
# keeping RESERVE_S for the parts after it), stdout to parts/NAME.jsonl, status to parts/NAME.status
run_part() {
    local name=$1 box=$2; shift 2
    local avail=$(( $(left) - ${RESERVE_S:-0} ))
    (( avail < box )) && box=$avail
    if (( box < 10 )); then
        echo "skipped: no time left in the ${BUDGET}s budget" >"$OUT/parts/$name.status"
        echo "[gpu_check] $name: skipped (budget spent)"
        return
    fi
    echo "[gpu_check] $name (time box ${box}s)"
    local t0=$(date +%s)
    timeout --kill-after=10 "$box" "$@" >"$OUT/parts/$name.jsonl" 2>"$OUT/parts/$name.log"
    local rc=$?
    local took=$(( $(date +%s) - t0 ))
    if (( rc == 124 || rc == 137 )); then
        echo "timed out after ${box}s" >"$OUT/parts/$name.status"
    elif (( rc != 0 )); then
        echo "failed (exit $rc, ${took}s): see parts/$name.log" >"$OUT/parts/$name.status"
    else
        echo "ok (${took}s)" >"$OUT/parts/$name.status"
    fi
    echo "[gpu_check] $name: $(cat "$OUT/parts/$name.status")"
}

if [[ "${GPU_CHECK_SMOKE:-0}" == 1 ]]; then
    DEV=$("$PY" -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")
    ISIZE=(64 128); TSIZE=(64 64); B8=2; ITERS=(--warmup 1 --iters 2); ITERS8=("${ITERS[@]}")
    L16=(--opts MODEL.BACKBONE.LAYER_NUM 4 MODEL.BACKBONE.INIT_CHANNEL 8)
    L33=(--opts MODEL.BACKBONE.LAYER_NUM 5 MODEL.BACKBONE.INIT_CHANNEL 8)
    TESTS=(tests/test_cuda.py -k "not nccl")
    export DYN_SEG_TEST_DEVICE="$DEV"
else
    DEV=cuda
    ISIZE=(1024 2048); TSIZE=(768 768); B8=8; ITERS=(--warmup 3 --iters 10)
    ITERS8=(--warmup 1 --iters 4)
    L16=(--config-file configs/Cityscapes/Dynamic-L16-Raw.yaml
         --opts MODEL.BACKBONE.NORM BN MODEL.SEM_SEG_HEAD.NORM BN)
    L33=(--config-file configs/Cityscapes/Dynamic-L33-Raw-ImageNet.yaml
         --opts MODEL.BACKBONE.NORM BN MODEL.SEM_SEG_HEAD.NORM BN MODEL.WEIGHTS "")
    TESTS=(tests/test_cuda.py)
fi
BENCH=("$PY" tools/benchmark.py --device "$DEV")
INF=(--task inference --modes faithful fast fast-bf16)

"$PY" - >"$OUT/parts/env.json" <<'EOF'
import json, platform, torch
print(json.dumps({"torch": torch.__version__, "cuda": torch.version.cuda,
                  "device": torch.cuda.get_device_name(0) if torch.cuda.is_available()
                  else platform.processor() or platform.machine(),
                  "python": platform.python_version()}))
EOF

RESERVE_S=300 run_part cuda_tests 150 "$PY" -m pytest -q -p no:cacheprovider "${TESTS[@]}"
for net in L16 L33; do
    declare -n NET=$net
    for batch in 1 "$B8"; do
        if [[ $batch == 1 ]]; then IT=("${ITERS[@]}"); BOX=25; else IT=("${ITERS8[@]}"); BOX=40; fi
        [[ $net == L33 ]] && BOX=$((BOX + 5))
        for gates in open cells:0.5; do
            RESERVE_S=100 run_part "infer_${net}_b${batch}_${gates/:/}" "$BOX" \
                "${BENCH[@]}" "${INF[@]}" --size "${ISIZE[@]}" --batch "$batch" \
                --gates "$gates" "${IT[@]}" "${NET[@]}"
        done
    done
done
# float32 without TF32: the fast plan's argmax against the faithful one (target: equal)
RESERVE_S=120 run_part infer_L16_b1_open_notf32 25 "${BENCH[@]}" --task inference \
    --modes faithful fast --no-tf32 \
    --size "${ISIZE[@]}" --batch 1 --gates open "${ITERS[@]}" "${L16[@]}"
RESERVE_S=45 run_part infer_L16_b1_compile 90 "${BENCH[@]}" --task inference \
    --modes faithful fast fast-compile fast-compile-graphs --size "${ISIZE[@]}" --batch 1 \
    --gates open "${ITERS[@]}" "${L16[@]}"
RESERVE_S=0 run_part train_L16 45 "${BENCH[@]}" --task train --train-size "${TSIZE[@]}" \
    --train-batch "$B8" --train-modes faithful channels_last-bf16 "${ITERS[@]}" "${L16[@]}"
RESERVE_S=0 run_part train_L16_compile 120 "${BENCH[@]}" --task train \
    --train-size "${TSIZE[@]}" --train-batch "$B8" --train-modes channels_last-bf16-compile \
    "${ITERS[@]}" "${L16[@]}"

"$PY" tools/gpu_report.py "$OUT" --elapsed $(( $(date +%s) - START ))
# every part's records and logs in one archive beside the report (three files to bring back)
tar czf "$OUT/parts.tgz" -C "$OUT" parts
