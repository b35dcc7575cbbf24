#!/usr/bin/env bash
# The command a device call runs, after the staged vLLM parts were unpacked into /root/site
# (../shared/gpu/stage-vllm.sh; one call per part: `bash .gpu/pN/unpack.sh`):
#   bash bench/gpu/device.sh --shape r1v3 --n 256 --max-tokens 1024 --annotate-n 0
# Results, timelines and the log land in $OUT.
set -u
export PYTHONPATH=/root/site:$(bash scripts/package-links.sh):$PWD VLLM_USE_FLASHINFER_SAMPLER=0 HF_HUB_OFFLINE=1 VLLM_NO_USAGE_STATS=1 \
       PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 BENCH_WORK=/root/bench
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
timeout "${BENCH_TIMEOUT:-570}" python3 bench/gpu/run_gpu_bench.py --out "$OUT" "$@" > "$OUT/log.txt" 2>&1
status=$?
grep -E "^\[|ratio|path|raw vLLM|pipeline|Traceback|Error" "$OUT/log.txt" | grep -v label | tail -40
exit $status
