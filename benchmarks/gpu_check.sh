#!/usr/bin/env bash
# One-shot check on a machine with one NVIDIA GPU (no network needed): in one go,
# within a global time budget (8 minutes by default), it records
#   1. nvidia-smi and `python -m numbanorm info`,
#   2. the cuda- and gpu-marked tests on the real GPU (pytest -m "cuda or gpu"),
#   3. `python -m numbanorm bench --backend cuda` at the large sizes, a GPU training step's, and tiny (the host time per call):
#      GB/s over the device-to-device copy bandwidth, and time over PyTorch's CUDA op
#      when torch with CUDA is importable (timed with CUDA events on both sides),
#   4. summary.txt: each step's exit status and time, then the bench table,
# all under benchmarks/results/gpu-<GPU name>-<date>/ (and under $OUT too when set).
# A step that fails or times out is logged and the next one runs anyway.
#
#   bash benchmarks/gpu_check.sh                          # PYTHON defaults to .venv/bin/python
#   PYTHON=/opt/env/bin/python bash benchmarks/gpu_check.sh
#   GPU_CHECK_DRY=1 bash benchmarks/gpu_check.sh          # no GPU: the CUDA simulator, tiny shapes,
#                                                         # a few tests; results under $TMPDIR
#
# The Python must have numbanorm's dependencies and numba-cuda installed (and pytest);
# nothing is installed here. torch and cupy are optional: without them the comparison
# (and the tests using them) are skipped, and the summary says so.
# Settings (environment): GPU_CHECK_BUDGET (seconds in all, 480), GPU_CHECK_TEST_TIMEOUT
# (240), GPU_CHECK_SIZES ("large step tiny"), GPU_CHECK_OPS (all), GPU_CHECK_RESULTS (the folder),
# GPU_CHECK_PYTEST_ARGS (more pytest arguments, split at spaces: test files, -x ...).
set -uo pipefail

cd "$(dirname "$0")/.." || exit 1
ROOT=$(pwd)
START=$SECONDS
DRY=${GPU_CHECK_DRY:-0}
[ "$DRY" = 0 ] && DRY=
BUDGET=${GPU_CHECK_BUDGET:-480}
TEST_TIMEOUT=${GPU_CHECK_TEST_TIMEOUT:-240}
RESERVE=15          # seconds kept for the summary and the copy to $OUT
BENCH_MIN=150       # seconds the tests leave to the bench at least

PYTHON=${PYTHON:-.venv/bin/python}
if ! command -v "$PYTHON" > /dev/null 2>&1; then
    echo "gpu_check: $PYTHON not found; trying python3" >&2
    PYTHON=python3
fi
case "$PYTHON" in
    */*) PYTHON="$(cd "$(dirname "$PYTHON")" && pwd)/$(basename "$PYTHON")" ;;
esac
export PYTHONUNBUFFERED=1     # logs are complete up to the moment a timeout stops a step

if [ -n "$DRY" ]; then
    export NUMBA_ENABLE_CUDASIM=1
    SIZES=${GPU_CHECK_SIZES:-tiny}
    OPS=${GPU_CHECK_OPS:-layer_norm batch_norm/NHWC group_norm/NCHW}
    BENCH_EXTRA=(--repeat 1)
    PYTEST_ARGS=(tests/test_cuda.py -k "gpu or importing or bad_device")   # a few, quick
else
    unset NUMBA_ENABLE_CUDASIM    # the real GPU, whatever the caller's environment says
    SIZES=${GPU_CHECK_SIZES:-large step tiny}
    OPS=${GPU_CHECK_OPS:-}
    BENCH_EXTRA=()
    PYTEST_ARGS=()
fi
if [ -n "${GPU_CHECK_PYTEST_ARGS:-}" ]; then
    read -r -a PYTEST_ARGS <<< "$GPU_CHECK_PYTEST_ARGS"
fi

# ----------------------------------------------------------------------------- the results folder
gpu_name=""
if command -v nvidia-smi > /dev/null 2>&1; then
    gpu_name=$(timeout 30 nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)
fi
if [ -n "$DRY" ]; then
    gpu_name="simulator"
elif [ -z "$gpu_name" ]; then
    gpu_name="unknown"
fi
slug=$(printf '%s' "$gpu_name" | tr '[:upper:]' '[:lower:]' | tr -cs 'a-z0-9' '-' | sed 's/^-*//; s/-*$//')
if [ -n "${GPU_CHECK_RESULTS:-}" ]; then
    dir=$GPU_CHECK_RESULTS
else
    parent=benchmarks/results
    [ -n "$DRY" ] && parent=${TMPDIR:-/tmp}/numbanorm-gpu-check-dry
    dir=$parent/gpu-${slug:-unknown}-$(date -u +%Y-%m-%d)
    if [ -e "$dir" ]; then
        k=2
        while [ -e "$dir-$k" ]; do k=$((k + 1)); done
        dir=$dir-$k
    fi
fi
mkdir -p "$dir" || exit 1
dir=$(cd "$dir" && pwd)
STEPS=$dir/steps.txt
: > "$STEPS"
failed=0

copy_out() {    # the device runner returns only what is under $OUT
    if [ -n "${OUT:-}" ] && [ -d "$OUT" ]; then
        mkdir -p "$OUT/$(basename "$dir")" && cp -r "$dir/." "$OUT/$(basename "$dir")/"
    fi
}

left() { echo $((BUDGET - (SECONDS - START) - RESERVE)); }

# step NAME LIMIT OUTPUT COMMAND...: run COMMAND with stdout to OUTPUT (and stderr too, unless
# STEP_ERR names another file), at most LIMIT seconds and never past the budget; log its status.
step() {
    local name=$1 limit=$2 output=$3 rc t0 budget note
    shift 3
    budget=$(left)
    [ "$budget" -lt "$limit" ] && limit=$budget
    if [ "$limit" -lt 5 ]; then
        printf '%-12s %-9s %5s  %s\n' "$name" "skipped" "0s" "no time left in the ${BUDGET}s budget" >> "$STEPS"
        echo "== $name: skipped, no time left"
        failed=$((failed + 1))
        return
    fi
    echo "== $name (at most ${limit}s) -> $output"
    t0=$SECONDS
    timeout -k 10 "$limit" "$@" > "$dir/$output" 2> "$dir/${STEP_ERR:-$output}.stderr"
    rc=$?
    if [ -z "${STEP_ERR:-}" ]; then      # one file: stderr after stdout
        cat "$dir/$output.stderr" >> "$dir/$output" && rm -f "$dir/$output.stderr"
    else
        mv "$dir/${STEP_ERR}.stderr" "$dir/$STEP_ERR"
    fi
    case $rc in
        0) note="ok" ;;
        124|137) note="timed out after ${limit}s" ;;
        127) note="command not found" ;;
        *) note="failed" ;;
    esac
    [ "$rc" -ne 0 ] && failed=$((failed + 1))
    printf '%-12s exit %-4s %4ss  %s\n' "$name" "$rc" "$((SECONDS - t0))" "$note" >> "$STEPS"
    echo "   exit $rc ($note) in $((SECONDS - t0))s"
    copy_out
}

echo "gpu_check: results in $dir${DRY:+ (dry run: CUDA simulator, tiny shapes)}"

# ----------------------------------------------------------------------------- 1. the machine
if command -v nvidia-smi > /dev/null 2>&1; then
    step nvidia-smi 30 nvidia-smi.txt nvidia-smi
    step nvidia-smi-q 30 nvidia-smi-q.txt nvidia-smi -q -d CLOCK,POWER,PERFORMANCE,MEMORY,ECC
else
    echo "nvidia-smi: not found${DRY:+ (dry run)}" > "$dir/nvidia-smi.txt"
    printf '%-12s %-9s %5s  %s\n' nvidia-smi "missing" "0s" "not on PATH${DRY:+ (dry run)}" >> "$STEPS"
    [ -z "$DRY" ] && failed=$((failed + 1))
fi
step info 60 info.txt "$PYTHON" -m numbanorm info
step optional 60 optional.txt "$PYTHON" - <<'EOF'
import importlib
for name in ("numba.cuda", "torch", "cupy"):
    try:
        module = importlib.import_module(name)
    except Exception as exc:   # missing or broken: say so, go on
        print(f"{name}: not importable ({type(exc).__name__}: {exc}); what needs it is skipped")
        continue
    if name == "torch":
        if module.cuda.is_available():
            print(f"torch {module.__version__}: CUDA {module.version.cuda}, {module.cuda.get_device_name(0)}")
        else:
            print(f"torch {module.__version__}: no CUDA device (the bench does not compare with torch)")
    elif name == "cupy":
        try:
            count = module.cuda.runtime.getDeviceCount()
        except Exception as exc:
            count = f"none ({type(exc).__name__})"
        print(f"cupy {module.__version__}: devices {count}")
    else:
        print(f"numba.cuda: is_available() = {module.is_available()}")
EOF

# ----------------------------------------------------------------------------- 2. the tests
limit=$TEST_TIMEOUT
room=$(( $(left) - BENCH_MIN ))
[ "$room" -lt "$limit" ] && limit=$room
[ "$limit" -lt 30 ] && limit=30
step pytest "$limit" pytest.txt "$PYTHON" -m pytest -q -m "cuda or gpu" -p no:cacheprovider -rfEs --durations=10 \
    --junitxml="$dir/pytest.xml" ${PYTEST_ARGS[@]+"${PYTEST_ARGS[@]}"}

# ----------------------------------------------------------------------------- 3. the bench
read -r -a sizes <<< "$SIZES"
bench=(-m numbanorm bench --backend cuda --size "${sizes[@]}" --no-numpy ${BENCH_EXTRA[@]+"${BENCH_EXTRA[@]}"})
if [ -n "$OPS" ]; then
    read -r -a ops <<< "$OPS"
    bench+=(--ops "${ops[@]}")
fi
echo "python ${bench[*]}" > "$dir/bench-command.txt"
STEP_ERR=bench-progress.txt step bench "$(left)" bench.txt "$PYTHON" "${bench[@]}"

# ----------------------------------------------------------------------------- 4. the summary
{
    mode=""
    [ -n "$DRY" ] && mode=", DRY RUN (CUDA simulator, tiny shapes: nothing measured)"
    echo "numbanorm gpu_check, $(date -u '+%Y-%m-%d %H:%M UTC')$mode"
    echo "GPU: $gpu_name; host $(uname -n), $(nproc) cores"
    if commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null); then
        git -C "$ROOT" diff --quiet HEAD 2>/dev/null || commit="$commit (with uncommitted changes)"
    else
        commit="unknown (not a git checkout)"
    fi
    echo "commit: $commit"
    echo "python: $PYTHON ($("$PYTHON" -c 'import platform; print(platform.python_version())' 2>/dev/null || echo '?'))"
    sed 's/^/  /' "$dir/optional.txt" 2>/dev/null
    echo
    echo "steps (exit status, seconds; budget ${BUDGET}s, used $((SECONDS - START))s):"
    sed 's/^/  /' "$STEPS"
    if [ -s "$dir/pytest.txt" ]; then
        echo "  pytest: $(grep -E '(passed|failed|error|skipped|no tests ran)' "$dir/pytest.txt" | tail -n 1)"
    fi
    echo
    echo "== $(cat "$dir/bench-command.txt")"
    if grep -q '^op ' "$dir/bench.txt" 2>/dev/null; then
        cat "$dir/bench.txt"
    else
        echo "(no table: the bench did not finish; the rows it measured, from its progress log:)"
        grep -E ' (forward|backward): ' "$dir/bench-progress.txt" 2>/dev/null \
            | sed -E 's/^\[[#.]*\] +[0-9]+\/[0-9]+ +[0-9.]+s  /  /'
        tail -n 5 "$dir/bench-progress.txt" 2>/dev/null
    fi
} > "$dir/summary.txt"
copy_out
cat "$dir/summary.txt"
echo
echo "gpu_check: results in $dir"
if [ -n "${OUT:-}" ] && [ -d "$OUT" ]; then
    echo "gpu_check: copied to $OUT/$(basename "$dir")"
fi
echo "gpu_check: $failed step(s) failed, timed out or skipped"
[ "$failed" -eq 0 ]
