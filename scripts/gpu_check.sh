#!/usr/bin/env bash
# The GPU check: install from prepared wheels, probe the environment (CUDA-graph
# conditional nodes, the modes this version can run), count operators and host reads per
# forward, run the CUDA tests, benchmark the inference plans (fast plan beside the graph
# plans: eager, bf16, one CUDA graph, compiled) and training (eager, bf16, checkpointed,
# compiled), profile, and write OUTDIR/gpu_check.json + OUTDIR/gpu_check.md. Every part is
# time-boxed and the parts run in order of importance; a part that runs out of time, or
# finds no time left, is reported as such. Total budget: GPU_CHECK_BUDGET_S (480).
#
#   On a machine with network (once):  bash scripts/prepare_gpu_wheels.sh   # fills .whl/
#   On the GPU machine (no network):   bash scripts/gpu_check.sh OUTDIR
#
# GPU_CHECK_SMOKE=1 runs the parts at toy sizes on whatever device there is (a check of
# this script itself, e.g. on a CPU machine; the compile parts only with
# GPU_CHECK_SMOKE_COMPILE=1, they take minutes on a CPU). GPU_CHECK_ONLY="NAME ..." runs
# only the named parts (env and the report always).
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
    if [[ -n "${GPU_CHECK_ONLY:-}" && " $GPU_CHECK_ONLY " != *" $name "* ]]; then
        return
    fi
    local avail=$(( $(left) - ${RESERVE_S:-0} - 10 ))  # 10 s stay for the report
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

COMPILE=1
if [[ "${GPU_CHECK_SMOKE:-0}" == 1 ]]; then
    DEV=$("$PY" -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")
    ISIZE=(64 128); TSIZE=(64 64); B8=2; ITERS=(--warmup 0 --iters 1); ITERS8=("${ITERS[@]}")
    L16=(--opts MODEL.BACKBONE.LAYER_NUM 4 MODEL.BACKBONE.INIT_CHANNEL 8)
    L33=(--opts MODEL.BACKBONE.LAYER_NUM 5 MODEL.BACKBONE.INIT_CHANNEL 8)
    TESTS=(tests/test_cuda.py -k "not nccl")
    export DYN_SEG_TEST_DEVICE="$DEV"
    [[ "$DEV" == cpu && "${GPU_CHECK_SMOKE_COMPILE:-0}" != 1 ]] && COMPILE=0
else
    DEV=cuda
    ISIZE=(1024 2048); TSIZE=(768 768); B8=8; ITERS=(--warmup 2 --iters 8)
    ITERS8=(--warmup 1 --iters 3)
    L16=(--config-file configs/Cityscapes/Dynamic-L16-Raw.yaml
         --opts MODEL.BACKBONE.NORM BN MODEL.SEM_SEG_HEAD.NORM BN)
    L33=(--config-file configs/Cityscapes/Dynamic-L33-Raw-ImageNet.yaml
         --opts MODEL.BACKBONE.NORM BN MODEL.SEM_SEG_HEAD.NORM BN MODEL.WEIGHTS "")
    TESTS=(tests/test_cuda.py)
fi
# modes this version lacks (or that need CUDA) are listed in each part's header, not errors
BENCH=("$PY" tools/benchmark.py --device "$DEV" --skip-unavailable)
# float32 (TF32 on, PyTorch's default for convolutions) and bfloat16, fast plan beside the graph plans
INF=(--task inference --modes faithful fast fast-bf16 graph-dense graph-conditional
     graph-dense-bf16 graph-conditional-bf16 graph-dense-cudagraph graph-conditional-cudagraph)
# float32 without TF32: argmax against the faithful plan (target: equal up to float32 ties)
FP32=(--task inference --no-tf32 --modes faithful fast graph-dense graph-conditional
      graph-dense-cudagraph graph-conditional-cudagraph)
COUNT=(--task count --size 64 128 --batch 1 --train-size 64 64 --train-batch 2 --calibrate 1
       --modes faithful fast fast-bf16 graph-dense graph-conditional graph-dense-bf16
       graph-conditional-bf16 graph-dense-cudagraph graph-conditional-cudagraph
       --train-modes faithful bf16 checkpoint bf16-checkpoint)

"$PY" tools/gpu_report.py --env "$DEV" >"$OUT/parts/env.json" 2>"$OUT/parts/env.log" \
    || echo "{}" >"$OUT/parts/env.json"

# 1. what a forward asks of the machine (small input: the counts do not depend on it)
run_part count_L16 40 "${BENCH[@]}" "${COUNT[@]}" "${L16[@]}"
run_part count_L33 45 "${BENCH[@]}" "${COUNT[@]}" "${L33[@]}"
# 2. correctness on the device
RESERVE_S=240 run_part cuda_tests 120 "$PY" -m pytest -q -p no:cacheprovider "${TESTS[@]}"
# 3. batch-1 latency targets: all open, cells:0.5, TF32 off
for net in L16 L33; do
    declare -n NET=$net
    BOX=45; [[ $net == L33 ]] && BOX=60
    run_part "infer_${net}_b1_open" "$BOX" "${BENCH[@]}" "${INF[@]}" --size "${ISIZE[@]}" \
        --batch 1 --gates open "${ITERS[@]}" "${NET[@]}"
    run_part "infer_${net}_b1_open_notf32" "$BOX" "${BENCH[@]}" "${FP32[@]}" \
        --size "${ISIZE[@]}" --batch 1 --gates open "${ITERS[@]}" "${NET[@]}"
    run_part "infer_${net}_b1_cells0.5" "$BOX" "${BENCH[@]}" "${INF[@]}" --size "${ISIZE[@]}" \
        --batch 1 --gates cells:0.5 "${ITERS[@]}" "${NET[@]}"
done
# 4. training target: eager, bf16, per-cell checkpointing
run_part train_L16 90 "${BENCH[@]}" --task train --train-size "${TSIZE[@]}" \
    --train-batch "$B8" --train-modes faithful channels_last-bf16 checkpoint bf16-checkpoint \
    "${ITERS[@]}" "${L16[@]}"
# 5. where the time goes: device busy share and top kernels
run_part profile_L16_b1 45 "${BENCH[@]}" --task profile --modes fast graph-dense \
    graph-conditional graph-dense-cudagraph graph-conditional-cudagraph --iters 3 \
    --size "${ISIZE[@]}" --batch 1 --gates open "${L16[@]}"
# 6. whole-network compilation (minutes of compiling): inference, then training
if (( COMPILE )); then
    run_part infer_L16_b1_compile 150 "${BENCH[@]}" --task inference --modes faithful fast \
        graph-dense-compile graph-conditional-compile --size "${ISIZE[@]}" --batch 1 \
        --gates open "${ITERS[@]}" "${L16[@]}"
    run_part train_L16_compile 150 "${BENCH[@]}" --task train --train-size "${TSIZE[@]}" \
        --train-batch "$B8" --train-modes bf16-compile-graph "${ITERS[@]}" "${L16[@]}"
fi
# 7. batch 8
for net in L16 L33; do
    declare -n NET=$net
    for gates in open cells:0.5; do
        BOX=50; [[ $net == L33 ]] && BOX=70
        run_part "infer_${net}_b${B8}_${gates/:/}" "$BOX" "${BENCH[@]}" "${INF[@]}" \
            --size "${ISIZE[@]}" --batch "$B8" --gates "$gates" "${ITERS8[@]}" "${NET[@]}"
    done
done

"$PY" tools/gpu_report.py "$OUT" --elapsed $(( $(date +%s) - START ))
# every part's records and logs in one archive beside the report (three files to bring back)
tar czf "$OUT/parts.tgz" -C "$OUT" parts
