"""The throughput profile: FP8 defaults that explicit settings override, and max_num_seqs sized from a KV
pool estimate that matches the pools vLLM measured for R1V3's shape (GPU.md, issue 27)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vlmbatch.schema.contracts.settings import Settings
from vlmbatch.worker.engines.profiles import apply_profile, model_sizes, plan_kv
from vlmbatch.worker.smoke_model import R1V3_38B, build_model_folder

H100_BYTES = 81559 * 2**20  # what NVML reports for an H100 80 GB
H200_BYTES = 143771 * 2**20


@pytest.fixture(scope="module")
def r1v3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_model_folder(tmp_path_factory.mktemp("models") / "r1v3", R1V3_38B, weights=False)


@pytest.mark.parametrize(
    ("gpu_bytes", "quantization", "kv_dtype", "measured_tokens"),
    [
        (H100_BYTES, "fp8", "fp8", 247_344),  # H100, FP8 weights and KV, 0.9 (GPU.md)
        (H200_BYTES, None, "auto", 208_080),  # H200, bf16, 0.9 (GPU.md)
        (H200_BYTES, "fp8", "fp8", 718_000),  # H200, FP8 weights and KV, 0.9 (issue 27)
    ],
)
def test_the_pool_estimate_is_within_five_percent_of_what_vllm_measured(
    r1v3: Path, gpu_bytes: int, quantization: str | None, kv_dtype: str, measured_tokens: int
) -> None:
    sizes = model_sizes(str(r1v3))
    assert sizes is not None
    plan = plan_kv(
        sizes,
        gpu_bytes=gpu_bytes,
        kv_cache_bytes=None,
        utilization=0.9,
        gpus=1,
        quantization=quantization,
        kv_cache_dtype=kv_dtype,
        expected_context_tokens=4096,
    )
    assert plan is not None
    assert abs(plan.pool_tokens / measured_tokens - 1) < 0.05
    assert plan.max_num_seqs == plan.pool_tokens // 4096


def test_the_throughput_profile_fills_fp8_memory_and_a_sized_batch(r1v3: Path) -> None:
    settings = Settings(model=str(r1v3), profile="throughput")
    effective, chosen = apply_profile(settings, gpu_bytes=H100_BYTES)
    # FP8 weights and KV cache through the settings of that name (--quantization, --kv-cache-dtype).
    assert (effective.quantization, effective.kv_cache_dtype) == ("fp8", "fp8")
    assert effective.engine_args == {"watermark": 0.05}
    assert effective.gpu_memory_utilization == 0.95
    # An 80 GB H100 at 0.95 holds ~282k FP8 tokens: 68 sequences of 4,096.
    assert effective.max_num_seqs == chosen["kv_plan"]["max_num_seqs"] == 68
    assert chosen["engine_args"] == effective.engine_args and chosen["profile"] == "throughput"


def test_explicit_flags_and_engine_args_win_over_the_profile(r1v3: Path) -> None:
    settings = Settings(
        model=str(r1v3),
        profile="throughput",
        max_num_seqs=32,
        gpu_memory_utilization=0.8,
        engine_args={"kv_cache_dtype": "auto", "max_num_batched_tokens": 8192},
    )
    effective, chosen = apply_profile(settings, gpu_bytes=H100_BYTES)
    assert (effective.max_num_seqs, effective.gpu_memory_utilization) == (32, 0.8)
    assert effective.quantization == "fp8"
    assert effective.kv_cache_dtype is None  # the explicit engine argument below stands
    assert effective.engine_args == {"kv_cache_dtype": "auto", "watermark": 0.05, "max_num_batched_tokens": 8192}
    assert "kv_plan" not in chosen


def test_the_default_profile_changes_nothing_and_a_cpu_run_sizes_from_its_fixed_kv_cache(r1v3: Path) -> None:
    settings = Settings(model=str(r1v3))
    assert apply_profile(settings, gpu_bytes=H100_BYTES) == (settings, {"profile": "default"})
    cpu = Settings(model=str(r1v3), profile="throughput", kv_cache_bytes=2**30, expected_context_tokens=512)
    effective, chosen = apply_profile(cpu, gpu_bytes=None)
    assert chosen["kv_plan"]["pool_tokens"] == 2**30 // (2 * 64 * 8 * 128)  # 8,192 FP8 tokens of R1V3
    assert effective.max_num_seqs == 16
    unknown = Settings(model="Skywork/Skywork-R1V3-38B", profile="throughput")
    assert apply_profile(unknown, gpu_bytes=H100_BYTES)[0].max_num_seqs == 256
