#!/usr/bin/env bash
# Rebuild everything the project ships in data/: corpus, tokenizer + model, decomposition.
# Each step resumes from its checkpoint when re-run. Takes hours on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
C=.venv/bin/comptune
$C corpus build --cache .cache/debian                      # needs Debian's apt-get, dpkg-deb, groff
OMP_NUM_THREADS=1 $C pretrain --out runs/pretrain-tiny --config configs/pretrain-bundled.yaml
$C corpus blocks --tokenizer runs/pretrain-tiny/tokenizer --split train --n 4000 --out runs/decomp/train_mix.safetensors
$C corpus blocks --tokenizer runs/pretrain-tiny/tokenizer --split eval --n 64 --seed 1 --out runs/decomp/eval_mix.safetensors
# exits 130 when stopped at max_minutes: rerun this script to continue (every step resumes)
OMP_NUM_THREADS=2 $C decompose --model runs/pretrain-tiny --preset small --config configs/decompose-bundled.yaml \
  --data runs/decomp/train_mix.safetensors --eval-data runs/decomp/eval_mix.safetensors --eval-blocks 16 --out runs/decomp/vpd --resume
