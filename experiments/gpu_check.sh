#!/usr/bin/env bash
# gpu_check.sh [DIR] -- the first command on a CUDA machine, stopping at a failure: the tiny pipeline compiled in bf16,
# 2 micro-batches a step, a resume; --bench at the gpu preset's width (MFU); 2+ GPUs: torchrun --scope global.
set -euo pipefail
R="$(cd "$(dirname "$0")/.." && pwd)"
D="${1:-$(mktemp -d -t rho-gpu-check-XXXX)}"
mkdir -p "$D" && cd "$D" && echo "working in $D"
python -c "import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0))"
python "$R/train_ref.py" --device cuda --preset tiny
python "$R/train_slm.py" --device cuda --ratio 0.6 --tokens_per_step 1024  # 2 micro-batches of 8 x 64
rm out/slm0.6/done.json  # as if killed after its last checkpoint
python "$R/train_slm.py" --device cuda --ratio 0.6 --tokens_per_step 1024 --resume | grep "resuming at step"
python "$R/train_ref.py" --device cuda --preset tiny --n_layer 8 --n_head 8 --n_embd 512 --block_size 256 --out_dir b
python "$R/train_slm.py" --device cuda --out_dir b --bench --batch_size 64 | grep "tok/s"
if [ "$(python -c 'import torch; print(torch.cuda.device_count())')" -ge 2 ]; then
  A=(--device cuda --ratio 0.6 --max_tokens 16384 --n_evals 2 --tokens_per_step 2048)
  torchrun --nproc_per_node=2 "$R/train_slm.py" "${A[@]}" --scope global --name ddp2  # 2 processes x 2 x 8 x 64
  python "$R/train_slm.py" "${A[@]}" --batch_size 16 --name single16                # 1 process x 2 x 16 x 64
  python -c "import json; v = [json.load(open(f'out/{r}/done.json'))['val_loss'] for r in ('ddp2', 'single16'))]
print('val loss, 2 processes and one:', v); assert abs(v[0] - v[1]) < 0.05"
fi
echo "all checks passed; outputs in $D"
