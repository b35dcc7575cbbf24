"""Settings vLLM's CPU build needs and does not choose well by itself: the KV cache's size and, with
tensor parallelism, which cores each rank binds its threads to.

Left alone, the CPU build reserves `gpu_memory_utilization` (0.9) of the machine's memory for the KV cache
of *each* rank: a first run on a laptop or a shared box dies at engine start, and at `-tp 2` the kernel
kills a rank. Its automatic thread binding wants one NUMA node per rank and refuses a one-node machine
("Not enough allowed NUMA nodes"). vlmbatch fills both in unless the user set them.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping, Sequence
from pathlib import Path

GiB = 2**30
# The KV cache's share of the memory available when the engine starts, and its ceiling. A quarter leaves
# room for the weights, the image pipeline and the rest of the machine; 4 GiB is ~30k tokens of a 7B model
# (bf16), more than a CPU can use at its speed, and keeps a big machine from locking up its memory.
KV_CACHE_FRACTION = 0.25
KV_CACHE_CAP_BYTES = 4 * GiB
# vLLM refuses a KV cache that cannot hold a block; below this a run is pointless anyway.
KV_CACHE_FLOOR_BYTES = 64 * 2**20


def available_memory_bytes(meminfo: Path = Path("/proc/meminfo"), cgroup: Path = Path("/sys/fs/cgroup")) -> int | None:
    """Memory this process may still take: the kernel's MemAvailable, or the room left under this cgroup's
    limit (a container's) when that is smaller. None when neither can be read (not Linux)."""
    candidates: list[int] = []
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                candidates.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    try:
        limit = (cgroup / "memory.max").read_text().strip()
        if limit != "max":
            candidates.append(int(limit) - int((cgroup / "memory.current").read_text().strip()))
    except (OSError, ValueError):
        pass
    return max(0, min(candidates)) if candidates else None


def default_kv_cache_bytes(available: int | None, ranks: int) -> int | None:
    """Each rank's KV cache: KV_CACHE_FRACTION of `available`, at most KV_CACHE_CAP_BYTES, split between the
    `ranks` (each rank holds its own cache in the same memory). None when `available` is unknown."""
    if available is None:
        return None
    total = min(int(available * KV_CACHE_FRACTION), KV_CACHE_CAP_BYTES)
    return max(total // max(ranks, 1), KV_CACHE_FLOOR_BYTES)


def usable_cores() -> list[int]:
    """The CPU ids this process may run on (its affinity mask: a container's or `taskset`'s share)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def thread_binding(cores: Sequence[int], ranks: int) -> str:
    """VLLM_CPU_OMP_THREADS_BIND for `ranks` ranks: the cores split into `ranks` contiguous sets, `|` between
    ranks (e.g. 4 cores, 2 ranks: "0,1|2,3"). Raises ValueError when there are fewer cores than ranks."""
    if ranks < 1 or len(cores) < ranks:
        raise ValueError(f"{ranks} tensor-parallel ranks need as many CPU cores; this process may use {len(cores)}")
    per_rank, extra = divmod(len(cores), ranks)
    sets: list[str] = []
    start = 0
    for rank in range(ranks):
        size = per_rank + (1 if rank < extra else 0)
        sets.append(",".join(str(c) for c in cores[start : start + size]))
        start += size
    return "|".join(sets)


def prepare_cpu_environment(environ: MutableMapping[str, str], *, ranks: int, cores: Sequence[int]) -> None:
    """Bind one core set per rank when tensor parallel and the user set no binding (vLLM's engine core and
    its ranks are spawned processes: they read it from the environment)."""
    if ranks > 1 and not environ.get("VLLM_CPU_OMP_THREADS_BIND"):
        environ["VLLM_CPU_OMP_THREADS_BIND"] = thread_binding(cores, ranks)


def is_cpu_build() -> bool:
    """Whether the vLLM installed is its CPU build (imports vLLM)."""
    from vllm.platforms import current_platform

    return bool(current_platform.is_cpu())
