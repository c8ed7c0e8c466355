#!/usr/bin/env bash
# One GPU call that re-makes the bundled decomposition and runs the h.3.mlp pilot (issue 9),
# several configs side by side on one GPU, each sized to the time the call has.
#
#   OUT=results/gpu bash scripts/gpu_decompose.sh SECONDS configs/gpu/round1
#
# SECONDS is the wall time the whole script may take; the folder holds one YAML per run. It builds the training mix, measures each
# config's steps/s with all of them running at once (a CAL_S-second calibration, default 45), gives every run as
# many steps as fit the remaining time (so each run's schedule — lr cosine, p annealing — completes),
# then packs each run's decomposition, logs and quality figures into $OUT (shards under 15 MiB).
# Each run keeps its resumable checkpoint in runs/gpu/<name>; `comptune decompose --resume` continues it.
set -euo pipefail
cd "$(dirname "$0")/.."
budget=${1:?usage: gpu_decompose.sh SECONDS CONFIG_FOLDER}
deadline=$(( $(date +%s) + budget ))
: "${OUT:?set OUT to the folder the results go to}"
PY=${PYTHON:-python3}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4} PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=true
comptune() { "$PY" -c 'from comptune.cli import main; raise SystemExit(main())' "$@"; }
W=runs/gpu
mkdir -p "$W" "$OUT"
$PY -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else "")'

[ -f $W/train_mix.safetensors ] || comptune corpus blocks --tokenizer data/models/comptune-tiny --split train --n "${NBLOCKS:-60000}" --out $W/train_mix.safetensors
[ -f $W/eval_mix.safetensors ] || comptune corpus blocks --tokenizer data/models/comptune-tiny --split eval --n 64 --seed 1 --out $W/eval_mix.safetensors

# one run per YAML of DecomposeConfig fields (over the "small" preset) in the set's folder
SET=${2:?usage: gpu_decompose.sh SECONDS CONFIG_FOLDER}
NAMES=$(cd "$SET" && ls *.yaml | sed 's/\.yaml$//' | grep -E "${ONLY:-.}")  # ONLY=regex: a subset (for a dry run)
EXACT=${EXACT:-$(echo "$NAMES" | head -n 1)}  # the run whose weights travel back in fp32
CAL_S=${CAL_S:-45}

run_all() {  # $1: phase (cal|main), then extra arguments; each run's yaml is $W/<phase>-<name>.yaml
  local phase=$1 pids=()
  shift
  for n in $NAMES; do
    comptune decompose --model data/models/comptune-tiny --preset small --config "$W/$phase-$n.yaml" \
      --data $W/train_mix.safetensors --out "$W/$phase-$n" --resume "$@" > "$W/$phase-$n.log" 2>&1 &
    pids+=($!)
  done
  local rc=0
  for p in "${pids[@]}"; do wait "$p" || [ $? -eq 130 ] || rc=1; done
  for n in $NAMES; do tail -c 400 "$W/$phase-$n.log"; echo; done
  return $rc
}

# calibration: every config at once for CAL_S seconds of training (the step count is only a ceiling)
for n in $NAMES; do
  printf '%s\nsteps: 100000\neval_every: 1000000\nlog_every: 1\ncheckpoint_every: 1000000\nmax_minutes: %s\n' "$(cat "$SET/$n.yaml")" "$($PY -c "print($CAL_S / 60)")" > "$W/cal-$n.yaml"
done
run_all cal
train_s=$(( deadline - $(date +%s) - 70 ))  # start-up, final evaluation, packing
echo "training seconds per run: $train_s"
[ "$train_s" -gt 0 ] || { echo "no time left to train after the calibration"; exit 1; }
for n in $NAMES; do
  steps=$($PY -c "import json,sys; r=[json.loads(l) for l in open('$W/cal-$n/train_log.jsonl')]; print(int(r[-1]['step'] / $CAL_S * $train_s * 0.95))")
  echo "$n: $steps steps"
  printf '%s\nsteps: %d\neval_every: %d\nlog_every: 20\ncheckpoint_every: 500\nmax_minutes: %.2f\n' \
    "$(cat "$SET/$n.yaml")" "$steps" $(( steps / 6 + 1 )) "$($PY -c "print($train_s / 60 + 0.4)")" > "$W/main-$n.yaml"
done
run_all main --eval-data $W/eval_mix.safetensors --eval-blocks 16 || echo "a run failed; packing what there is"

# pack: several full runs' weights in fp32 would not fit the way back (64 MiB): all but $EXACT
# travel in fp16 (cast back to fp32 on arrival)
$PY - "$W" "main-$EXACT" <<'EOF'
import sys, pathlib, torch
from safetensors.torch import load_file, save_file
w = pathlib.Path(sys.argv[1])
for d in sorted(w.glob("main-*")):
    f = d / "decomposition.safetensors"
    if d.is_dir() and f.exists() and d.name != sys.argv[2]:
        t = load_file(str(f))
        save_file({k: v.half() if v.is_floating_point() else v for k, v in t.items()}, str(d / "decomposition.fp16.safetensors"), metadata={"format": "pt"})
        f.unlink()
EOF
tar -C "$W" -cf "$W/pack.tar" --exclude='checkpoint.safetensors' --exclude='.*.tmp' $(cd "$W" && ls -d main-* cal-*.log)
split -b 15M -d "$W/pack.tar" "$OUT/pack.tar.part"
ls -la "$OUT"
