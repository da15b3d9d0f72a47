#!/usr/bin/env bash
# Every check that needs a CUDA GPU, in one go, ending with one table of them all (target: under
# 5 minutes on one GPU; the table's last row says whether it kept to that):
#   bash bench/gpu_check.sh [results-dir]
# 1. the CUDA tests (AMP training and step, SyncBatchNorm, one-rank NCCL, half-precision val/export,
#    ONNX on onnxruntime's CUDA provider; NCCL DDP and DataParallel when there are two GPUs), each
#    recording its figures; 2. training throughput on 1 (and 2) GPUs; 3. the table (bench/gpu_table.py),
#    printed and written to results-dir/gpu_table.txt. Exits non-zero when any check failed.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-bench/results}"
budget=300
mkdir -p "$out"
python -c "import torch; c = torch.cuda; print(torch.__version__, c.is_available() and c.get_device_name(0), c.device_count(), 'GPU(s)')"
start=$SECONDS
rm -f "$out/gpu_tests.xml" "$out/gpu_scaling.json"  # stale files would pass for this run's results
# xunit1: the JUnit family record_property is made for (pytest warns about it under its default xunit2).
tests_status=0
python -m pytest -q -m gpu tests/gpu --junitxml "$out/gpu_tests.xml" -o junit_family=xunit1 2>&1 |
    tee "$out/gpu_tests.txt" || tests_status=$?
ranks=$(python -c "import torch; print('1 2' if torch.cuda.device_count() > 1 else '1')")
bench_status=0
# shellcheck disable=SC2086  # $ranks is a list of words on purpose
python bench/ddp_scaling.py --device cuda --ranks $ranks --img 640 --batch 64 --epochs 2 --workers 8 \
    --repeats 1 --out "$out/gpu_scaling.json" || bench_status=$?
echo "pytest exited $tests_status, the scaling bench $bench_status"
python bench/gpu_table.py --junit "$out/gpu_tests.xml" --scaling "$out/gpu_scaling.json" \
    --elapsed "$((SECONDS - start))" --budget "$budget" --out "$out/gpu_table.txt"
