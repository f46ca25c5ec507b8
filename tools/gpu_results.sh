#!/usr/bin/env bash
# The GPU results of the README, regenerated: the main job, the benchmark's target preset, the
# Transformer example dense vs sparse, and (with two or more GPUs) its scaling over the GPUs.
# Assumes jaxcsb is installed with CUDA (tools/gpu_check.sh builds it). Outputs go to OUTDIR.
#
#   tools/gpu_results.sh OUTDIR
#
# Steps (GPU_RESULTS_STEPS selects a subset, default all of them):
#   mlp          models/mlp_digits.py, the main job, on the GPU
#   bench        jaxcsb-bench --preset gpu-targets (DLMC from JAXCSB_DLMC_DIR or data/dlmc)
#   transformer  models/transformer_lm.py --preset gpu at 90% (fewer steps: timings, not accuracy)
#   scaling      models/transformer_scaling.py --preset gpu --batch-size 64 (2+ GPUs only)
# BENCH_TIME_LIMIT (seconds, default 600) stops the benchmark from starting new cases; the whole
# preset takes 5-6 minutes on an H100.
set -u -o pipefail

OUT=${1:?usage: tools/gpu_results.sh OUTDIR}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
REPO=$(cd "$(dirname "$0")/.." && pwd)
STEPS=${GPU_RESULTS_STEPS:-mlp bench transformer scaling}
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
# NVLink multicast stays off: it can take a shared host's GPUs out of service.
export NCCL_NVLS_ENABLE=0
has() { [[ " $STEPS " == *" $1 "* ]]; }
DLMC=${JAXCSB_DLMC_DIR:-$REPO/data/dlmc}
# Outside the repository, so that the installed package (with its CUDA module) is imported.
cd "$OUT" || exit 1

if has mlp; then
  $PY "$REPO/models/mlp_digits.py" --no-progress --json "$OUT/mlp_digits_gpu.json" 2>&1 |
    tee "$OUT/mlp.log"
fi
if has bench; then
  DLMC_ARGS=()
  [ -d "$DLMC" ] && DLMC_ARGS=(--dlmc "$DLMC")
  $PY -m jaxcsb.bench --preset gpu-targets "${DLMC_ARGS[@]}" --out "$OUT" --no-progress \
    --time-limit "${BENCH_TIME_LIMIT:-600}" 2>&1 | tee "$OUT/bench.log"
fi
if has transformer; then
  $PY "$REPO/models/transformer_lm.py" --preset gpu --steps 40 --sparsities 0.9 \
    --timing-rounds 3 --timing-repeats 5 \
    --no-progress --json "$OUT/transformer_lm_gpu.json" --plot "$OUT/transformer_lm_gpu.png" \
    2>&1 | tee "$OUT/transformer.log"
fi
if has scaling; then
  GPUS=$($PY -c 'import jax; print(jax.device_count())')
  if [ "$GPUS" -ge 2 ]; then
    $PY "$REPO/models/transformer_scaling.py" --preset gpu --batch-size 64 \
      --json "$OUT/transformer_scaling.json" 2>&1 | tee "$OUT/scaling.log"
  else
    echo "scaling: skipped, $GPUS device(s) here" | tee "$OUT/scaling.log"
  fi
fi
