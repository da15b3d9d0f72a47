#!/usr/bin/env bash
# Every check that needs a CUDA GPU, in one go (a few minutes on one modern GPU):
#   bash bench/gpu_check.sh [results-dir]
# 1. the CUDA tests (AMP training, SyncBatchNorm, half-precision val/export; NCCL DDP and
#    DataParallel when there are two GPUs), 2. training throughput on 1 (and 2) GPUs.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-bench/results}"
mkdir -p "$out"
python -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0), torch.cuda.device_count(), 'GPU(s)')"
python -m pytest -q -m gpu tests/gpu 2>&1 | tee "$out/gpu_tests.txt"
ranks=$(python -c "import torch; print('1 2' if torch.cuda.device_count() > 1 else '1')")
# shellcheck disable=SC2086
python bench/ddp_scaling.py --device cuda --ranks $ranks --img 640 --batch 64 --epochs 2 --workers 8 \
    --repeats 1 --out "$out/gpu_scaling.json"
