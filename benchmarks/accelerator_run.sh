#!/usr/bin/env bash
# The accelerator run: the benchmark table, then the study presets sized for one accelerator, written with the
# device's name under results/. It works in pieces of at most JAXICL_PIECE_S seconds (default 570, under the
# 10-minute limit of one remote command): each step is resumable (training workdirs under OUT) and marked done
# when finished; a piece that runs out of time exits with code 75 — run the same command again to go on.
#
#   bash benchmarks/accelerator_run.sh              # on a GPU/TPU machine; repeat until it prints "all done"
#   bash benchmarks/accelerator_run.sh --dry-run    # the same steps at tiny sizes on any machine (CI)
#
# Across leases: a lease's finished study programs are kept as small records, $OUT/multihead_full/groups/ and
# $OUT/head_utilization_full/records/ (their checkpoints stay behind, ignored by git); bring those folders back and
# commit them, and the next lease's run takes them and trains only the rest (jaxicl.studies: resume from records).
# Budget on one H100: the benchmarks and the study-2 step costs ~12 min (measured pieces, below); study 1 full ~16-17
# min (9 of its 24 programs measured: 535 s) and study 2 full ~14 min of training (its measured step costs) + its
# analysis: ~45 min in all, in pieces.
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=0
if [ "${1:-}" = "--dry-run" ]; then DRY=1; shift; fi
PY=${PYTHON:-python}
DEVICE=$($PY -c "import jax; print(jax.devices()[0].device_kind.replace(' ', '_').replace('/', '_'))") || exit 2
OUT=${1:-results/accelerator_${DEVICE}}
[ $DRY = 1 ] && OUT=${1:-results/dry_run_${DEVICE}}
PIECE_S=${JAXICL_PIECE_S:-570}
START=$(date +%s)
mkdir -p "$OUT" || exit 2

step() {  # step NAME COMMAND...: run COMMAND within what is left of this piece, unless NAME is done
  local name=$1; shift
  if [ -f "$OUT/.done_$name" ]; then echo "[$name] done before, skipped"; return 0; fi
  local left=$(( PIECE_S - ($(date +%s) - START) ))
  if [ $left -le 30 ]; then echo "piece time used up before [$name]; run again to go on"; exit 75; fi
  echo "[$name] $* (≤ ${left}s)"
  timeout --signal=TERM --kill-after=20 "$left" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  tail -n 25 "$OUT/$name.log"
  if [ $rc = 0 ]; then touch "$OUT/.done_$name"; return 0; fi
  if [ $rc = 124 ] || [ $rc = 137 ]; then echo "[$name] stopped at the piece's time limit; run again to resume"; exit 75; fi
  echo "[$name] failed with exit code $rc (log: $OUT/$name.log)"; exit $rc
}

if [ $DRY = 1 ]; then
  step bench $PY benchmarks/bench_train.py --models small --batch 4 --chunk 2 --repeats 1 --no-torch-compile \
    --no-time-to-result --md "$OUT/bench.md" --json "$OUT/bench.json"
  step step_cost $PY benchmarks/step_cost.py --study head-utilization --preset tiny --chunk 10 --repeats 1 \
    --max-programs 1 --json "$OUT/step_cost.json"  # chunk = the tiny preset's log_every: its program is reused
  step multihead $PY -m jaxicl.cli reproduce multihead --preset tiny --out "$OUT/multihead_tiny"
  step head_utilization $PY -m jaxicl.cli reproduce head-utilization --preset tiny --out "$OUT/head_utilization_tiny"
else
  # Measured on one H100 (2026-11-26, results/accelerator_NVIDIA_H100_80GB_HBM3): 70 s, 128 s, 124 s (torch.compile
  # left out at batch 1024), 110 s for 4 of the 6 study-2 programs; the sweep's 1- and 8-seed rows 137 s.
  step bench_small $PY benchmarks/bench_train.py --models small --batch 64 --md "$OUT/bench_small_b64.md" \
    --json "$OUT/bench_small_b64.json"
  step bench_standard $PY benchmarks/bench_train.py --models standard --batch 64 --no-time-to-result \
    --md "$OUT/bench_standard_b64.md" --json "$OUT/bench_standard_b64.json"
  step bench_bf16 $PY benchmarks/bench_train.py --models standard --batch 1024 --dtype bfloat16 --no-torch-compile \
    --no-time-to-result --repeats 5 --md "$OUT/bench_b1024_bf16.md" --json "$OUT/bench_b1024_bf16.json"
  step step_cost $PY benchmarks/step_cost.py --study head-utilization --preset full --json "$OUT/step_cost_hu_full.json"
  step bench_sweep $PY benchmarks/bench_sweep.py --seeds 1,8,64 --steps 1000 --md "$OUT/bench_sweep.md" \
    --json "$OUT/bench_sweep.json"
  step multihead $PY -m jaxicl.cli reproduce multihead --preset full --out "$OUT/multihead_full"
  step head_utilization $PY -m jaxicl.cli reproduce head-utilization --preset full --out "$OUT/head_utilization_full"
fi
echo "all done: $OUT"
