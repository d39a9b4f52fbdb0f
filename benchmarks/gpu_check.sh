#!/usr/bin/env bash
# One prepared run on one H100/H200-class GPU (about 8 minutes) that checks what the README
# claims and writes everything it measures into one folder:
#   1. pytest -m gpu, and the fast suite on the GPU machine's CPU cores (beside the GPU steps);
#   2. benchmarks/throughput.py for cifar10 and imagenet128 at preset size: fp32 and bf16, eager
#      and compiled (img/s, ms/iter, peak memory, MFU), with a torch.profiler table of each;
#   3. benchmarks/attention.py at 16 to 128 px feature maps in bf16: fused against naive,
#      the naive path's out-of-memory included;
#   4. the cifar10 preset trained for 3 minutes (SIGTERM then stops it cleanly), then
#      sagan sample --grid of its EMA generator: the grid and the img/s.
#
#   bash benchmarks/gpu_check.sh [--out DIR] [--data CIFAR10_TRAIN_ZIP]
#   bash benchmarks/gpu_check.sh --cpu-smoke --out /tmp/smoke   # every step at toy size, on the CPU
#
# Rows go to DIR/RESULTS.md (the benchmarks' --record, redirected) and logs to DIR/*.log.
# Order: GPU tests, eager throughput, attention, training and grid, then compiled throughput
# (the slowest and least certain part) with what is left.
# Knobs (environment): TRAIN_SECONDS (180), COMPILE_TIMEOUT per compiled configuration (150),
# TESTS_SECONDS for the fast suite (420), TEST_WORKERS (4, with pytest-xdist), DEADLINE (seconds
# the whole script may take; the training is shortened to fit).
set -uo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-gpu_check_out}
DATA=""
SMOKE=0
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT="$2"; shift 2 ;;
    --data) DATA="$2"; shift 2 ;;
    --cpu-smoke) SMOKE=1; shift ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
export SAGAN_RESULTS="$OUT/RESULTS.md"
PY=${PYTHON:-python}
if [ -z "$DATA" ]; then
  for candidate in ../shared/data/cifar10/train.zip shared/data/cifar10/train.zip; do
    [ -f "$candidate" ] && DATA=$(cd "$(dirname "$candidate")" && pwd)/$(basename "$candidate") && break
  done
fi
status=0
step() {  # name, command...: run, log, remember failures, go on
  local name=$1; shift
  echo "== $name: $*" | tee -a "$OUT/summary.txt"
  local t0=$SECONDS
  "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "   exit $rc after $((SECONDS - t0)) s" | tee -a "$OUT/summary.txt"
  [ $rc -eq 0 ] || status=1
  return 0
}

{ date; $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
  torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')"; nvidia-smi 2>/dev/null | head -15; } \
  > "$OUT/device.txt" 2>&1

# the fast suite is CPU work: it runs beside the GPU steps, on a few of the machine's cores, with
# the GPU hidden from it, so that it cannot disturb the GPU timings' device (only their host threads)
if [ $SMOKE -eq 1 ]; then
  FAST_TESTS=(tests/test_losses.py tests/test_layers.py)
  XDIST=()
else
  FAST_TESTS=()
  XDIST=()
  $PY -c "import xdist" 2>/dev/null && XDIST=(-n "${TEST_WORKERS:-4}")
fi
echo "== tests_fast (in the background, GPU hidden): pytest ${XDIST[*]} ${FAST_TESTS[*]}" | tee -a "$OUT/summary.txt"
CUDA_VISIBLE_DEVICES="" OMP_NUM_THREADS=1 timeout "${TESTS_SECONDS:-420}" \
  $PY -m pytest -q -p no:cacheprovider "${XDIST[@]}" "${FAST_TESTS[@]}" > "$OUT/tests_fast.log" 2>&1 &
TESTS_PID=$!

if [ $SMOKE -eq 1 ]; then
  step tests_gpu $PY -m pytest -q -p no:cacheprovider -m gpu
  step throughput $PY benchmarks/throughput.py --preset cifar10 imagenet128 --precision bf16 --mode eager \
      --ch 8 --batch_size 2 --n_dis 1 --iters 1 --warmup 1 --device cpu --profile "$OUT" --record
  step attention $PY benchmarks/attention.py --sizes 16 --batch 1 --channels 16 --dtype bf16 --repeats 1 --record
  TRAIN_SECONDS=15
  TRAIN_ARGS=(--model.ch 4 --train.batch_size 8 --train.n_dis 1 --device cpu --train.sample_every 5 --train.log_every 2)
else
  step tests_gpu $PY -m pytest -q -p no:cacheprovider -m gpu
  # eager rows now; the compiled ones (minutes of compilation each) come last, after the training
  step throughput $PY benchmarks/throughput.py --preset cifar10 imagenet128 --mode eager --iters 10 --warmup 3 \
      --profile "$OUT" --record
  step attention $PY benchmarks/attention.py --record
  TRAIN_SECONDS=${TRAIN_SECONDS:-180}
  TRAIN_ARGS=(--precision bf16)
fi
# DEADLINE (seconds since the start, unset: none) shortens the training to fit what is left
if [ -n "${DEADLINE:-}" ]; then
  left=$((DEADLINE - SECONDS - 40))
  [ $left -lt $TRAIN_SECONDS ] && TRAIN_SECONDS=$((left > 20 ? left : 20))
fi

# 4. three minutes of the cifar10 preset (bundled MNIST digits when no CIFAR-10 zip is found),
# stopped by SIGTERM, which writes a checkpoint; then a grid from its EMA generator
DATA=${DATA:-$($PY -c "from sagan.data import demo_data_path; print(demo_data_path())")}
RUN="$OUT/cifar10_run"
echo "== train: cifar10 preset on $DATA for $TRAIN_SECONDS s" | tee -a "$OUT/summary.txt"
timeout --signal=TERM --kill-after=120 "$TRAIN_SECONDS" $PY -m sagan train --preset cifar10 --data "$DATA" --out "$RUN" \
  --steps 1000000 --no_progress --train.ckpt_every 1000000 "${TRAIN_ARGS[@]}" > "$OUT/train.log" 2>&1
if grep -q "SIGTERM: stopped after step" "$OUT/train.log"; then
  echo "   stopped cleanly by SIGTERM with a checkpoint" | tee -a "$OUT/summary.txt"
else
  echo "   did not stop cleanly: see train.log" | tee -a "$OUT/summary.txt"; status=1
fi
step sample $PY -m sagan sample "$RUN" --grid --n 100 --out "$OUT/cifar10_grid.png"
$PY - "$RUN" >> "$OUT/summary.txt" 2>&1 <<'PYEOF'
import json, sys
rows = [json.loads(l) for l in open(f"{sys.argv[1]}/metrics.jsonl") if '"img_per_s"' in l]
steady = rows[len(rows) // 2:] or rows
print(f"   trained {rows[-1]['step']} steps; img/s (second half of the run): "
      f"{sum(r['img_per_s'] for r in steady) / len(steady):.1f}")
PYEOF
# 2b. compiled throughput last: each configuration gets COMPILE_TIMEOUT seconds, or its share of
# what DEADLINE leaves, so that a slow compilation costs a row, not the run's other results
if [ $SMOKE -eq 0 ]; then
  CT=${COMPILE_TIMEOUT:-150}
  if [ -n "${DEADLINE:-}" ]; then
    share=$(((DEADLINE - SECONDS - 10) / 4))
    [ $share -lt $CT ] && CT=$share
  fi
  if [ $CT -ge 30 ]; then
    step throughput_compiled $PY benchmarks/throughput.py --preset cifar10 imagenet128 --mode compiled --iters 10 \
        --warmup 3 --timeout "$CT" --profile "$OUT" --record
  else
    echo "== throughput_compiled: skipped, DEADLINE leaves under 2 minutes" | tee -a "$OUT/summary.txt"
  fi
fi
if kill -0 $TESTS_PID 2>/dev/null; then
  echo "== tests_fast: still running; waiting for it (TESTS_SECONDS caps it)" | tee -a "$OUT/summary.txt"
fi
wait $TESTS_PID
rc=$?
echo "== tests_fast: exit $rc ($(tail -n 1 "$OUT/tests_fast.log"))" | tee -a "$OUT/summary.txt"
[ $rc -eq 0 ] || status=1
echo "== done: status $status; everything is in $OUT" | tee -a "$OUT/summary.txt"
exit $status
