#!/usr/bin/env bash
# The GPU machine's check of the CUDA build: build, test suite, kernel check, sanitizers,
# benchmark. Logs and summary.txt go to OUTDIR.
#
#   tools/gpu_check.sh OUTDIR
#
# Steps (GPU_CHECK_STEPS selects a subset, default all of them):
#   build     JAXCSB_CUDA=ON pip install --no-build-isolation . (log: build.log), then the
#             standalone kernel program tools/kernel_check.cu linked to the built kernels
#   pytest    JAX_PLATFORMS=cuda python -P -m pytest python_tests (log: pytest.log), on
#             PYTEST_WORKERS (default 4) processes when pytest-xdist is installed
#   check     kernel_check check: every kernel variant against a float64 reference (check.log)
#   sanitize  compute-sanitizer memcheck, racecheck, initcheck, synccheck over the small check
#             (GPU_CHECK_SANITIZERS selects a subset: racecheck alone takes ~8 minutes on an H100)
#   bench     kernel_check bench (CUDA events) and tools/gpu_bench_kernels.py (jaxcsb through
#             JAX beside torch.sparse CSR and dense), with determinism checks (bench*.log)
# KERNEL_CHECK_BIN=path uses a prebuilt kernel_check instead of building one. The exit status is
# 0 when every step passed, 1 otherwise (summary.txt ends with PASS or FAIL).
set -u -o pipefail

OUT=${1:?usage: tools/gpu_check.sh OUTDIR}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")/.."
STEPS=${GPU_CHECK_STEPS:-build pytest check sanitize bench}
PY=${PYTHON:-python3}
SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"
export PYTHONUNBUFFERED=1

FAILED=0  # the exit status: 1 once any step failed
note() { echo "$*" | tee -a "$SUMMARY"; }
has() { [[ " $STEPS " == *" $1 "* ]]; }
# Runs a step with a log, records its status and duration in the summary.
step() {
  local name=$1 log=$2
  shift 2
  local t0=$SECONDS
  "$@" >"$OUT/$log" 2>&1
  local rc=$?
  [ $rc = 0 ] || FAILED=1
  note "$(printf '%-10s %s  (%ds, log %s)' "$name" "$([ $rc = 0 ] && echo PASS || echo "FAIL rc=$rc")" $((SECONDS - t0)) "$log")"
  return $rc
}

REV=$(git rev-parse --short HEAD 2>/dev/null) && { git diff --quiet HEAD 2>/dev/null || REV="$REV+dirty"; }
# A fingerprint of the sources that the check exercises, which does not depend on the git
# metadata travelling with a copied tree: compare with the same line run on a checkout.
SRC=$(find cuda jaxcsb models python_tests tools/kernel_check.cu -type f \( -name '*.cu' -o -name '*.h' -o -name '*.cc' \
  -o -name '*.py' \) | LC_ALL=C sort | xargs sha1sum | sha1sum | cut -c1-12)
note "gpu_check $(date -u +%Y-%m-%dT%H:%M:%SZ) ${REV:-} sources $SRC"
note "$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1)"
note "$($PY -c 'import jax, sys; print("python", sys.version.split()[0], "jax", jax.__version__)' 2>&1 | tail -1)"

KC=${KERNEL_CHECK_BIN:-}
if has build; then
  step build build.log env JAXCSB_CUDA=ON $PY -m pip install --no-build-isolation --no-deps -v .
  if [ -z "$KC" ]; then
    LIB=$(find build -name libjaxcsb_cuda_kernels.a -newer pyproject.toml 2>/dev/null | head -1)
    [ -z "$LIB" ] && LIB=$(find build -name libjaxcsb_cuda_kernels.a | head -1)
    KC=build/kernel_check
    step kc-build kernel_check_build.log nvcc -O3 -std=c++17 -arch=sm_90 --expt-relaxed-constexpr \
      -Icuda tools/kernel_check.cu "$LIB" -o "$KC"
  fi
fi
[ -z "$KC" ] && KC=build/kc/kernel_check

if has pytest; then
  # pytest-xdist spreads the suite over a few processes when it is installed (it is on the GPU
  # machine); each process allocates GPU memory on demand.
  XDIST=()
  $PY -c 'import xdist' 2>/dev/null && XDIST=(-n "${PYTEST_WORKERS:-4}")
  # The larger property-test budget; the DLMC sample when it was carried along as data/dlmc.
  export JAXCSB_HYPOTHESIS_PROFILE=${JAXCSB_HYPOTHESIS_PROFILE:-gpu}
  [ -z "${JAXCSB_DLMC_DIR:-}" ] && [ -d data/dlmc ] && export JAXCSB_DLMC_DIR=$PWD/data/dlmc
  # -P: the source tree must not shadow the installed package (it has no native modules).
  # JAXCSB_TEST_MODELS=1: the example scripts run end to end, as in CI.
  step pytest pytest.log env JAX_PLATFORMS=cuda XLA_PYTHON_CLIENT_PREALLOCATE=false JAXCSB_TEST_MODELS=1 \
    timeout "${PYTEST_TIMEOUT:-420}" $PY -P -m pytest python_tests -q -p no:cacheprovider \
    "${XDIST[@]}"
  # The suite must have found the CUDA module: a fallback run tests nothing of it.
  if grep -q "built without CUDA support" "$OUT/pytest.log"; then
    FAILED=1
    note "pytest     FAIL: jaxcsb._cuda was not imported"
  fi
  note "           $(grep -E '^(FAILED|ERROR)|[0-9]+ (passed|failed)' "$OUT/pytest.log" | tail -1)"
fi

if has check; then
  step check check.log "$KC" check
  note "           $(tail -1 "$OUT/check.log")"
fi

if has sanitize; then
  CS=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null)
  for tool in ${GPU_CHECK_SANITIZERS:-memcheck racecheck initcheck synccheck}; do
    mode=quick
    [ "$tool" != memcheck ] && mode=tiny
    step "$tool" "sanitize_$tool.log" "$CS" --tool "$tool" --error-exitcode 3 "$KC" check "$mode"
    note "           $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$OUT/sanitize_$tool.log" | tail -1)"
  done
fi

if has bench; then
  step kc-bench bench_kernels.log "$KC" bench 64
  grep -E '^(bench|spmm|sddmm)' "$OUT/bench_kernels.log" | tee -a "$SUMMARY"
  step py-bench bench_peers.log env XLA_PYTHON_CLIENT_PREALLOCATE=false \
    $PY tools/gpu_bench_kernels.py
  sed -n '/^product/,$p' "$OUT/bench_peers.log" | tee -a "$SUMMARY"
fi
note "done in ${SECONDS}s: $([ $FAILED = 0 ] && echo PASS || echo FAIL)"
exit $FAILED
