#!/usr/bin/env bash
# The README's demo for seeds 0-2 (default threads, resumable), then demo.md; seed 0's students at 3 rates.
set -eu
cd "$(dirname "$0")/.."
ref() { python train_ref.py --ref_web 4 --seed "$1" --data_dir "data/demo$1" --out_dir "out/demo/seed$1" --resume; }
ref 0
for lr in 6e-3 3e-3 1.5e-3; do python train_slm.py --out_dir out/demo/seed0 --ratio 0.6 1.0 --lr $lr --resume; done
for s in 1 2; do ref $s; python train_slm.py --out_dir out/demo/seed$s --ratio 0.6 1.0 --resume; done
python plot.py --out_dir out/demo --png out/results/demo.png --full
