#!/usr/bin/env bash
# The command a device call runs, after the staged vLLM parts were unpacked into /root/site
# (../shared/gpu/stage-vllm.sh; one call per part: `bash .gpu/pN/unpack.sh`):
#   bash bench/gpu/device.sh --shape r1v3 --n 256 --max-tokens 1024 --annotate-n 0
#   BENCH_SCRIPT=bench/gpu/real_workloads.py bash bench/gpu/device.sh longtail --shape r1v3 --n 1024
# Results, timelines and the log land in $OUT. The package is put on the path through build/pkg
# (scripts/package-links.sh): the device has no install of it.
set -u
pkg=$(bash scripts/package-links.sh)
export PYTHONPATH=/root/site:$pkg:$PWD VLLM_USE_FLASHINFER_SAMPLER=0 HF_HUB_OFFLINE=1 VLLM_NO_USAGE_STATS=1 \
       PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 BENCH_WORK=/root/bench
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
script=${BENCH_SCRIPT:-bench/gpu/run_gpu_bench.py}
timeout "${BENCH_TIMEOUT:-570}" python3 "$script" --out "$OUT" "$@" > "$OUT/log.txt" 2>&1
status=$?
grep -E "^\[|ratio|path|raw|naive|pipeline|Traceback|Error" "$OUT/log.txt" | grep -v -E "label|INFO|WARNING" | tail -40
exit $status
