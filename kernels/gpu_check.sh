#!/usr/bin/env bash
# Builds, tests and benchmarks the featup kernels on a machine with a CUDA GPU, in one go, offline.
#
#   bash kernels/gpu_check.sh            # from anywhere; PYTHON=/path/to/python to pick the interpreter
#
# Needs torch (CUDA build), nvcc and pytest in that interpreter; featup is used from this checkout. Steps run
# most important first (about 8 minutes on an H100 host with 16 cores): JIT build, fast tests (CUDA included),
# benchmark, slow tests (nvcc sm_90 build, CUDA emulation), ahead-of-time build. Output goes to stdout and to
# $OUT/gpu_check.log when OUT is set. Exits non-zero if any step failed.
set -uo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-/tmp/featup_torch_extensions}
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
if [[ -n "${OUT:-}" ]]; then
  exec > >(tee "$OUT/gpu_check.log") 2>&1
fi

failed=()
step() {
  local name=$1
  shift
  echo
  echo "=== $name ==="
  local start=$SECONDS
  "$@"
  local rc=$?
  echo "--- $name: exit $rc after $((SECONDS - start)) s"
  ((rc == 0)) || failed+=("$name")
}

machine() {
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv
  nvcc --version | tail -n 2
  echo "cores: $(nproc)"
  "$PY" -c 'import sys, torch; print("python", sys.version.split()[0], "| torch", torch.__version__,
    "| cuda", torch.version.cuda, "| device", torch.cuda.get_device_name(), torch.cuda.get_device_capability())'
}

jit_build() {
  "$PY" - <<'EOF'
import logging, time
logging.basicConfig(level=logging.INFO)
from featup.ops import _extension
start = time.perf_counter()
reasons = {device: _extension.compiled_unavailable_reason(device) for device in ("cpu", "cuda")}
print(f"loaded from {_extension.kernels_origin()} in {time.perf_counter() - start:.0f} s; unavailable: {reasons}")
raise SystemExit(any(reasons.values()))
EOF
}

has_pytest() {
  "$PY" -c "import pytest" 2>/dev/null || { echo "pytest is not installed for $PY: tests skipped"; return 1; }
}

fast_tests() { has_pytest && "$PY" -m pytest kernels/tests -q -p no:cacheprovider -rs -m "not slow"; }
slow_tests() { has_pytest && "$PY" -m pytest kernels/tests -q -p no:cacheprovider -rs -m slow; }
benchmark() { "$PY" kernels/bench.py --device cuda --repeats 10; }

aot_build() {
  local lib=/tmp/featup_kernels_aot
  rm -rf "$lib" /tmp/featup_kernels_aot_tmp
  FEATUP_KERNELS_CUDA=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} \
    "$PY" kernels/setup.py build_ext --build-lib "$lib" --build-temp /tmp/featup_kernels_aot_tmp >/tmp/aot_build.log 2>&1 ||
    { tail -n 40 /tmp/aot_build.log; return 1; }
  PYTHONPATH="$lib:$PYTHONPATH" "$PY" - <<'EOF'
import torch
from featup.ops import _extension, adaptive_conv
assert _extension.compiled_unavailable_reason("cuda") is None, _extension.compiled_unavailable_reason("cuda")
origin = _extension.kernels_origin()
assert "featup_kernels_aot" in origin, f"expected the ahead-of-time build, got {origin}"
x = torch.randn(2, 8, 22, 22, device="cuda", requires_grad=True)
k = torch.randn(2, 16, 16, 7, 7, device="cuda", requires_grad=True)
adaptive_conv(x, k, backend="compiled").sum().backward()
torch.cuda.synchronize()
print(f"ahead-of-time build imported from {origin} and ran forward + backward")
EOF
}

step "machine" machine
step "JIT build" jit_build
step "tests (fast)" fast_tests
step "benchmark" benchmark
step "tests (slow)" slow_tests
step "ahead-of-time build" aot_build

echo
if ((${#failed[@]})); then
  echo "FAILED: ${failed[*]}"
  exit 1
fi
echo "all steps passed"
