#!/usr/bin/env bash
# One command for a machine with a CUDA GPU, from the repo root (every step has a timeout; together
# they stop within 530 s plus start-up):
#     bash benchmarks/gpu_check.sh
# 1. the Triton kernels against the reference on CUDA tensors (tests/ops_triton_cases.py);
# 2. bench_ops.py --device cuda: every RepAct/ACON form vs F.hardswish, float32 and float16 (AMP's
#    activation dtype), eager (the compiled rows are left out to stay inside the time);
# 3. bench_models.py --device cuda: MobileNetV3-Small inference, eager;
# 4. bench_train.py --device cuda --amp: MobileNetV3-Small training steps at 224 px, batch 128,
#    HardSwish vs RepAct-I (and RepAct-III eager), eager, then compiled;
# 5. bench_paper_grid.py --device cuda: the paper-scale grid (c1) itself (configs/studies/
#    cifar100-paper.yaml) for two short epochs per activation on synthetic CIFAR-100, data loading
#    included: the measured wall time per run that the grid file states.
# Everything lands in $OUT (default benchmarks/results/gpu/): JSON per script, a log, the tests' XML.
# A step that fails or runs out of time is named in the log and makes the exit status 1; the
# others still run.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
OUT=${OUT:-benchmarks/results/gpu}
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
: > "$LOG"
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_check.sh: no CUDA device')" || exit 2
"$PY" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())" \
    | tee -a "$LOG"

status=0
step() {  # step NAME SECONDS COMMAND...
    local name=$1 limit=$2 rc
    shift 2
    echo "== $name (limit ${limit}s)" | tee -a "$LOG"
    timeout "$limit" "$@" 2>&1 | tee -a "$LOG"
    rc=${PIPESTATUS[0]}
    if [ "$rc" -ne 0 ]; then
        echo "!! $name: exit $rc$([ "$rc" -eq 124 ] && echo ' (timed out)')" | tee -a "$LOG"
        status=1
    fi
}

step "Triton kernels vs reference (CUDA)" 75 "$PY" -m pytest -q -p no:cacheprovider tests/ops_triton_cases.py \
    --junitxml "$OUT/triton_tests.xml"
step "bench_ops float32" 45 "$PY" benchmarks/bench_ops.py --device cuda --no-compile --reps 30 \
    --out "$OUT/bench_ops_float32.json"
step "bench_ops float16" 30 "$PY" benchmarks/bench_ops.py --device cuda --no-compile --reps 30 --dtype float16 \
    --shapes 64,576,7,7 128,16,112,112 --out "$OUT/bench_ops_float16.json"
step "bench_models" 30 "$PY" benchmarks/bench_models.py --device cuda --engines eager --batch-sizes 1 128 \
    --rounds 20 --json "$OUT/bench_models.json"
step "bench_train eager (AMP)" 35 "$PY" benchmarks/bench_train.py --device cuda --amp --sizes 224 --batch 128 \
    --acts hardswish,repact,repact_bn --rounds 5 --out "$OUT/bench_train_eager.json"
step "bench_train compiled (AMP)" 75 "$PY" benchmarks/bench_train.py --device cuda --amp --compile --sizes 224 \
    --batch 128 --acts hardswish,repact --rounds 5 --out "$OUT/bench_train_compiled.json"
step "bench_paper_grid (c1)" 240 "$PY" benchmarks/bench_paper_grid.py --device cuda --limit-batches 150 \
    --limit-val-batches 20 --out "$OUT/bench_paper_grid.json"
echo "gpu_check.sh: results in $OUT (status $status)" | tee -a "$LOG"
exit $status
