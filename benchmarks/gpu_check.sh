#!/usr/bin/env bash
# One command for a machine with a CUDA GPU, from the repo root; every step has a timeout and
# together they stop within 445 s plus start-up (under 8 minutes):
#     bash benchmarks/gpu_check.sh                    # the steps below
#     bash benchmarks/gpu_check.sh --with-paper-grid  # and the paper-scale grid's rate (240 s more)
#     bash benchmarks/gpu_check.sh --dry-run          # list the steps and their limits, run nothing
# 1. the Triton kernels against the reference on CUDA tensors (tests/ops_triton_cases.py and the
#    triton cases of tests/test_ops_acon_kernels.py: the training ops, the table op, ACON);
# 2. bench_ops.py --device cuda: every RepAct/ACON form vs F.hardswish, float16 (AMP's activation
#    dtype) and float32, eager;
# 3. bench_models.py --device cuda: MobileNetV3-Small inference, eager and with the forward
#    captured in one CUDA graph (batch 1 and 128), then torch.compile(mode="reduce-overhead")
#    (batch 128);
# 4. bench_compile_forms.py --device cuda: the training forms under torch.compile, repact's
#    registered op against Inductor's fusion of the plain expression;
# 5. bench_train.py --device cuda --amp: training steps at 224 px, batch 128, HardSwish vs RepAct-I
#    (and RepAct-III eager), eager, then compiled with mode="reduce-overhead" (CUDA graphs; the
#    first step's compile time is in the table);
# 6. with --with-paper-grid, bench_paper_grid.py --device cuda: the paper-scale grid (c1)
#    (configs/studies/cifar100-paper.yaml) for two short epochs per activation on synthetic
#    CIFAR-100, data loading included.
# Every step has HardSwish in the same run, the baseline its ratios are taken to.
# Everything lands in $OUT (default benchmarks/results/gpu/): JSON per script, a log, the tests' XML.
# A step that fails or runs out of time is named in the log and makes the exit status 1; the
# others still run.
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=0
GRID=0
for arg in "$@"; do
    case "$arg" in
        --dry-run) DRY=1 ;;
        --with-paper-grid) GRID=1 ;;
        *) echo "gpu_check.sh: unknown argument '$arg' (accepted: --dry-run, --with-paper-grid)" >&2; exit 2 ;;
    esac
done
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
OUT=${OUT:-benchmarks/results/gpu}

status=0
total=0
step() {  # step NAME SECONDS COMMAND...
    local name=$1 limit=$2 rc
    shift 2
    total=$((total + limit))
    if [ "$DRY" -eq 1 ]; then
        echo "== $name (limit ${limit}s): $*"
        return
    fi
    echo "== $name (limit ${limit}s)" | tee -a "$LOG"
    timeout "$limit" "$@" 2>&1 | tee -a "$LOG"
    rc=${PIPESTATUS[0]}
    if [ "$rc" -ne 0 ]; then
        echo "!! $name: exit $rc$([ "$rc" -eq 124 ] && echo ' (timed out)')" | tee -a "$LOG"
        status=1
    fi
}

if [ "$DRY" -eq 0 ]; then
    mkdir -p "$OUT"
    LOG="$OUT/gpu_check.log"
    : > "$LOG"
    "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_check.sh: no CUDA device')" || exit 2
    "$PY" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())" \
        | tee -a "$LOG"
fi

# the Triton cases compile a kernel per dtype and flag combination on a fresh machine: four pytest
# workers where pytest-xdist is installed, so that the compiles run side by side
XDIST=()
"$PY" -c "import xdist" 2>/dev/null && XDIST=(-n 4)
step "Triton kernels vs reference (CUDA)" 90 "$PY" -m pytest -q -p no:cacheprovider ${XDIST[@]+"${XDIST[@]}"} \
    tests/ops_triton_cases.py tests/test_ops_acon_kernels.py -k triton --junitxml "$OUT/triton_tests.xml"
step "bench_ops float16" 30 "$PY" benchmarks/bench_ops.py --device cuda --no-compile --reps 30 --dtype float16 \
    --shapes 64,576,7,7 128,16,112,112 --out "$OUT/bench_ops_float16.json"
step "bench_ops float32" 30 "$PY" benchmarks/bench_ops.py --device cuda --no-compile --reps 30 \
    --shapes 64,16,56,56 128,16,112,112 --out "$OUT/bench_ops_float32.json"
step "bench_models eager and CUDA graphs" 30 "$PY" benchmarks/bench_models.py --device cuda \
    --engines eager cuda-graphs --batch-sizes 1 128 --rounds 20 --json "$OUT/bench_models.json"
step "bench_models reduce-overhead" 75 "$PY" benchmarks/bench_models.py --device cuda --engines reduce-overhead \
    --batch-sizes 128 --rounds 20 --json "$OUT/bench_models_reduce_overhead.json"
step "bench_compile_forms (op vs Inductor)" 45 "$PY" benchmarks/bench_compile_forms.py --device cuda \
    --acts repact-layer acon_c --shapes 128,16,112,112 --rounds 10 --out "$OUT/bench_compile_forms.json"
step "bench_train eager (AMP)" 35 "$PY" benchmarks/bench_train.py --device cuda --amp --sizes 224 --batch 128 \
    --acts hardswish,repact,repact_bn --rounds 5 --out "$OUT/bench_train_eager.json"
step "bench_train reduce-overhead (AMP)" 110 "$PY" benchmarks/bench_train.py --device cuda --amp --cuda-graphs \
    --sizes 224 --batch 128 --acts hardswish,repact --rounds 5 --out "$OUT/bench_train_reduce_overhead.json"
if [ "$GRID" -eq 1 ]; then
    step "bench_paper_grid (c1)" 240 "$PY" benchmarks/bench_paper_grid.py --device cuda --limit-batches 150 \
        --limit-val-batches 20 --out "$OUT/bench_paper_grid.json"
fi
if [ "$DRY" -eq 1 ]; then
    echo "gpu_check.sh: total limit ${total}s"
    exit 0
fi
echo "gpu_check.sh: results in $OUT (status $status)" | tee -a "$LOG"
exit $status
