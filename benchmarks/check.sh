#!/usr/bin/env bash
# Check the asv suite in the current environment (CI): every benchmark imports and
# has the right signature (`asv check`, for both configurations), then every
# benchmark runs once on the small shapes, float32 (a smoke run: NUMBANORM_BENCH_SMOKE=1,
# `--quick`, nothing saved). Exits non-zero when a benchmark is broken; skipped
# benchmarks (a backend or torch missing) are fine. About 2 minutes on 2 idle cores.
#
#   PYTHON=.venv/bin/python benchmarks/check.sh      # default: python3 on PATH
#   benchmarks/check.sh -b layer_norm                 # extra arguments go to `asv run`
#
# The environment needs numbanorm installed and asv (`pip install -e '.[bench]'`);
# with torch installed the comparisons with it run too.
set -euo pipefail
PYTHON=${PYTHON:-python3}
case "$PYTHON" in
    */*) PYTHON="$(cd "$(dirname "$PYTHON")" && pwd)/$(basename "$PYTHON")" ;;   # before the cd
esac
cd "$(dirname "$0")"
if ! "$PYTHON" -c "import asv, numbanorm" 2>/dev/null; then
    echo "check.sh: $PYTHON cannot import asv and numbanorm; pip install -e '.[bench]' first" >&2
    exit 1
fi
asv() { "$PYTHON" -m asv "$@"; }

# asv refuses to run without a description of the machine; keep an existing one.
asv machine --yes > /dev/null

echo "== asv check"
asv check --python=same
asv check --python=same --config asv.gpu.conf.json > /dev/null

echo "== asv smoke run (small shapes, float32, each benchmark once)"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
NUMBANORM_BENCH_SMOKE=1 asv run --python=same --quick --dry-run --show-stderr --durations 5 "$@" \
    > "$log" 2>&1 || status=$?
cat "$log"
# asv exits 2 when a benchmark failed; a failed parameter shows as "failed" too.
if [ "$status" -ne 0 ] || grep -E -q "(failed|Traceback)" "$log"; then
    echo "check.sh: benchmarks failed (asv exit status $status)" >&2
    grep -E "failed" "$log" >&2 || true
    exit 1
fi
echo "check.sh: every benchmark ran"
