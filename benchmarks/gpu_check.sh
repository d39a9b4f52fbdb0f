#!/usr/bin/env bash
# One prepared run on one H100/H200-class GPU, sized for one 10-minute call (DEADLINE, 540 s by
# default, bounds it; each step's rows are recorded as they are measured), writing everything
# into one folder, in this order:
#   1. benchmarks/attention.py at 16 to 128 px feature maps in bf16: fused against naive;
#   2. benchmarks/throughput.py, eager: cifar10 and imagenet128 at preset size, fp32 and bf16
#      (img/s, ms/iter, peak memory, MFU), with a torch.profiler table of each;
#   3. compiled: cifar10 bf16 with torch.compile's default mode and with reduce-overhead (CUDA
#      graphs), imagenet128 bf16 compiled; each bounded by its share of what is left;
#   4. the recipes: cifar10 and celeba64 presets trained for TRAIN_SECONDS each (SIGTERM stops
#      them with a checkpoint), a grid of each, and SAMPLES_* samples of each as a zip of PNGs
#      (for FID on any machine with the reference statistics: sagan score ZIP REFERENCE); FID
#      on the GPU too when the Inception weights are there (the fid extra, or
#      SAGAN_INCEPTION_WEIGHTS);
#   5. pytest -m gpu (compilation included), with what is left.
#
#   bash benchmarks/gpu_check.sh [--out DIR] [--data CIFAR10_ZIP] [--celeba CELEBA_ZIP]
#   bash benchmarks/gpu_check.sh --cpu-smoke --out /tmp/smoke   # every step at toy size, on the CPU
#
# Rows go to DIR/RESULTS.md (the benchmarks' --record, redirected) and logs to DIR/*.log.
# Knobs (environment): DEADLINE (540), TRAIN_SECONDS (45 per recipe), COMPILE_TIMEOUT per compiled
# configuration (120), SAMPLES_CIFAR (5000), SAMPLES_CELEBA (1500).
set -uo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-gpu_check_out}
DATA=""
CELEBA=""
SMOKE=0
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT="$2"; shift 2 ;;
    --data) DATA="$2"; shift 2 ;;
    --celeba) CELEBA="$2"; shift 2 ;;
    --cpu-smoke) SMOKE=1; shift ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
export SAGAN_RESULTS="$OUT/RESULTS.md"
PY=${PYTHON:-python}
DEADLINE=${DEADLINE:-540}
find_data() {  # the first of the candidates that exists, as an absolute path
  for candidate in "$@"; do
    [ -f "$candidate" ] && { echo "$(cd "$(dirname "$candidate")" && pwd)/$(basename "$candidate")"; return; }
  done
}
if [ $SMOKE -eq 0 ]; then  # the smoke run uses --data for both recipes
  [ -n "$DATA" ] || DATA=$(find_data ../shared/data/cifar10/train.zip shared/data/cifar10/train.zip shared/data/cifar10/test.zip)
  [ -n "$CELEBA" ] || CELEBA=$(find_data ../shared/data/celeba-10k.zip shared/data/celeba-10k.zip)
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
left() { echo $((DEADLINE - SECONDS)); }

{ date; $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
  torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')"; nvidia-smi 2>/dev/null | head -15; } \
  > "$OUT/device.txt" 2>&1

if [ $SMOKE -eq 1 ]; then
  TOY=(--ch 8 --batch_size 2 --n_dis 1 --iters 1 --warmup 1 --device cpu)
  step attention $PY benchmarks/attention.py --sizes 16 --batch 1 --channels 16 --dtype bf16 --repeats 1 --record
  step throughput $PY benchmarks/throughput.py --preset cifar10 imagenet128 --precision bf16 --mode eager \
      "${TOY[@]}" --profile "$OUT" --record
  COMPILED=()  # compiling on 2 CPU cores takes minutes: the smoke run leaves it out
  TRAIN_SECONDS=15
  SAMPLES_CIFAR=20; SAMPLES_CELEBA=10
  TRAIN_ARGS=(--model.ch 8 --train.batch_size 8 --train.n_dis 1 --device cpu --train.sample_every 5 --train.log_every 2)
  CELEBA=${CELEBA:-$DATA}
else
  step attention $PY benchmarks/attention.py --record
  step throughput $PY benchmarks/throughput.py --preset cifar10 imagenet128 --mode eager --iters 10 --warmup 3 \
      --profile "$OUT" --record
  COMPILED=("cifar10 compiled" "cifar10 reduce-overhead" "imagenet128 compiled")
  TRAIN_SECONDS=${TRAIN_SECONDS:-45}
  SAMPLES_CIFAR=${SAMPLES_CIFAR:-5000}; SAMPLES_CELEBA=${SAMPLES_CELEBA:-1500}
  TRAIN_ARGS=(--precision bf16)
fi

# 3. compiled throughput: each configuration gets COMPILE_TIMEOUT seconds or its share of what the
# deadline leaves after the recipes and tests, so that a slow compilation costs a row, not the run
for i in "${!COMPILED[@]}"; do
  set -- ${COMPILED[$i]}
  share=$(( ($(left) - 2 * TRAIN_SECONDS - 200) / (${#COMPILED[@]} - i) ))
  CT=${COMPILE_TIMEOUT:-120}
  [ $share -lt $CT ] && CT=$share
  if [ $CT -ge 30 ]; then
    step "throughput_$1_$2" $PY benchmarks/throughput.py --preset "$1" --precision bf16 --mode "$2" --iters 10 \
        --warmup 3 --timeout "$CT" --profile "$OUT" --record
  else
    echo "== throughput_$1_$2: skipped, the deadline leaves too little" | tee -a "$OUT/summary.txt"
  fi
done

# 4. the recipes, each stopped by SIGTERM (which writes a checkpoint); a grid and a zip of samples
HAVE_INCEPTION=0  # the smoke run leaves out the real Inception (minutes on a CPU)
[ $SMOKE -eq 1 ] || HAVE_INCEPTION=$($PY -c "
from sagan.inception import resolve_inception_weights
try:
    resolve_inception_weights(download=False); print(1)
except Exception:
    print(0)" 2>/dev/null)
recipe() {  # name preset data samples
  local name=$1 preset=$2 data=$3 n=$4 run="$OUT/$1_run"
  if [ -z "$data" ]; then
    echo "== $name: no data found (pass it); skipped" | tee -a "$OUT/summary.txt"; status=1; return
  fi
  echo "== $name: $preset preset on $data for $TRAIN_SECONDS s" | tee -a "$OUT/summary.txt"
  timeout --signal=TERM --kill-after=120 "$TRAIN_SECONDS" $PY -m sagan train --preset "$preset" --data "$data" \
    --out "$run" --steps 1000000 --no_progress --train.ckpt_every 1000000 "${TRAIN_ARGS[@]}" > "$OUT/$name.log" 2>&1
  if grep -q "SIGTERM: stopped after step" "$OUT/$name.log"; then
    echo "   stopped cleanly by SIGTERM with a checkpoint" | tee -a "$OUT/summary.txt"
  else
    echo "   did not stop cleanly: see $name.log" | tee -a "$OUT/summary.txt"; status=1; return
  fi
  $PY - "$run" >> "$OUT/summary.txt" 2>&1 <<'PYEOF'
import json, sys
rows = [json.loads(l) for l in open(f"{sys.argv[1]}/metrics.jsonl") if '"img_per_s"' in l]
steady = rows[len(rows) // 2:] or rows
print(f"   trained {rows[-1]['step']} steps; img/s (second half of the run): "
      f"{sum(r['img_per_s'] for r in steady) / len(steady):.1f}")
PYEOF
  step "${name}_grid" $PY -m sagan sample "$run" --grid --n 100 --out "$OUT/${name}_grid.png"
  step "${name}_samples" $PY -m sagan sample "$run" --n "$n" --out "$run/fid_samples"
  (cd "$run/fid_samples" && $PY -m zipfile -c "$OUT/${name}_samples.zip" .) \
    || { echo "   could not zip the samples" | tee -a "$OUT/summary.txt"; status=1; }
  if [ "$HAVE_INCEPTION" = 1 ]; then
    step "${name}_fid" $PY -m sagan eval "$run" --n "$n" --json "$OUT/${name}_fid.json"
  else
    echo "   no Inception weights here: score ${name}_samples.zip elsewhere (sagan score)" | tee -a "$OUT/summary.txt"
  fi
}
recipe cifar10 cifar10 "$DATA" "$SAMPLES_CIFAR"
recipe celeba64 celeba64 "$CELEBA" "$SAMPLES_CELEBA"

# 5. the GPU tests, compilation included, with what is left
T=$(( $(left) > 60 ? $(left) : 60 ))
step tests_gpu timeout "$T" $PY -m pytest -q -p no:cacheprovider -m gpu
echo "== done: status $status after $SECONDS s; everything is in $OUT" | tee -a "$OUT/summary.txt"
exit $status
