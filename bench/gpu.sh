#!/usr/bin/env bash
# The GPU check (issue 13), one short prepared script for a lent GPU machine.
#   1. the gpu-marked tests;
#   2. bench/features.py --device cuda on 256 examples (LESS loop, gradsift factorized, sparse and dense Adam,
#      plain training) -> bench/results/features-cuda.md;
#   3. a 20,000-example featurisation of a generated pool, timed for tokens/s -> appended to that file;
#   4. the same with 16,384-token batches (the default, 1,536, is sized for CPU memory): how much of a GPU's
#      time small batches leave idle.
# Each step runs even when an earlier one fails; the exit status is 1 if any failed.
# Without CUDA it says so and exits 0, so it is safe to call anywhere.
# Measured on one H200 (2026-11-30): the gpu-marked tests 16 s; features.py on 1,024 examples ran all seven
# timed phases but had not written its file after 330 s (the gradient engine ran at about 40 examples/s there),
# hence 256 by default; each phase's line is printed as it ends, so a run cut short keeps its timings in the log.
set -euo pipefail
usage() {
    cat <<'TXT'
usage: bench/gpu.sh [--python PY] [--data FILE] [--n-features N] [--n-scale N] [--model MODEL] [--big-batch TOKENS] [--out FILE] [--skip-tests] [--dry-run]
  --python PY       interpreter with gradsift importable (default: .venv/bin/python, else python3 with PYTHONPATH=src)
  --data FILE       data file for bench/features.py (default its own: ../shared's Alpagasus random 9k)
  --n-features N    examples for bench/features.py (default 256)
  --n-scale N       examples for the timed featurisation (default 20000)
  --model MODEL     model for the timed featurisation (default builtin)
  --big-batch T     batch_tokens of the second timed featurisation (default 16384; 0 skips it)
  --out FILE        results file (default bench/results/features-cuda.md)
  --skip-tests      do not run the gpu-marked tests
  --dry-run         print the commands, run nothing
TXT
}
cd "$(dirname "$0")/.."
PY=""
DATA=""
N_FEATURES=256
N_SCALE=20000
MODEL=builtin
BIG=16384
OUT=bench/results/features-cuda.md
TESTS=1
DRY=0
while [ $# -gt 0 ]; do
    case "$1" in
        --python) PY="$2"; shift 2 ;;
        --data) DATA="$2"; shift 2 ;;
        --n-features) N_FEATURES="$2"; shift 2 ;;
        --n-scale) N_SCALE="$2"; shift 2 ;;
        --model) MODEL="$2"; shift 2 ;;
        --big-batch) BIG="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        --skip-tests) TESTS=0; shift ;;
        --dry-run) DRY=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "gpu.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
    esac
done
case "$BIG" in ''|*[!0-9]*) echo "gpu.sh: --big-batch must be a non-negative integer, got '$BIG'" >&2; exit 2 ;; esac
for v in "$N_FEATURES" "$N_SCALE"; do
    case "$v" in ''|*[!0-9]*) echo "gpu.sh: counts must be positive integers, got '$v'" >&2; exit 2 ;; esac
done
if [ -z "$PY" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"; fi
fi
run() {
    echo "+ $*"
    if [ "$DRY" = 0 ]; then "$@"; fi
}
if [ "$DRY" = 0 ] && ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 3)' 2>/dev/null; then
    echo "gpu.sh: no CUDA device visible to $PY: nothing run (skipped)"
    exit 0
fi
start=$(date +%s)
failed=0
if [ "$TESTS" = 1 ]; then
    run env HF_HUB_OFFLINE=1 "$PY" -m pytest -q -p no:cacheprovider -m gpu tests || failed=1
fi
run "$PY" bench/features.py --device cuda --n "$N_FEATURES" ${DATA:+--data "$DATA"} --out "$OUT" || failed=1
run "$PY" bench/featurize_scale.py --device cuda --n "$N_SCALE" --model "$MODEL" --append "$OUT" || failed=1
if [ "$BIG" != 0 ]; then
    run "$PY" bench/featurize_scale.py --device cuda --n "$N_SCALE" --model "$MODEL" --batch-tokens "$BIG" \
        --max-batch 512 --append "$OUT" || failed=1
fi
echo "gpu.sh: done in $(( $(date +%s) - start )) s; results in $OUT"
exit "$failed"
