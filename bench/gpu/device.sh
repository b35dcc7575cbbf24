#!/usr/bin/env bash
# The command a device call runs (after the staged vLLM parts were unpacked into /root/site):
#   bash bench/gpu/device.sh [run_gpu_bench.py arguments]
# Results and logs land in $OUT.
set -uo pipefail
export PYTHONPATH=/root/site:$PWD VLLM_USE_FLASHINFER_SAMPLER=0 HF_HUB_OFFLINE=1 VLLM_NO_USAGE_STATS=1 \
       PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 BENCH_WORK=/root/bench VLLM_LOGGING_LEVEL=INFO
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
timeout "${BENCH_TIMEOUT:-560}" python3 bench/gpu/run_gpu_bench.py --out "$OUT" "$@" 2>&1 | tee "$OUT/log.txt" \
  | grep -vE "it/s\]|^\s*$" | tail -60
