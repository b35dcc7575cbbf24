"""The throughput profile's engine arguments are fields of the installed vLLM's EngineArgs, and the worker's
command line applies the profile beneath explicit flags (no engine is started)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vlmbatch.producer.cli.engine_options import with_engine_args
from vlmbatch.schema.contracts.settings import Settings

pytestmark = [pytest.mark.vllm]


def test_the_profile_reaches_the_settings_as_vllm_engine_arguments_under_explicit_ones(tiny_model: Path) -> None:
    settings = Settings(
        engine="vllm",
        model=str(tiny_model),
        trust_remote_code=True,
        profile="throughput",
        kv_cache_bytes=2**26,
        expected_context_tokens=64,
        gpu_memory_utilization=0.5,
    )
    effective = with_engine_args(settings, ("kv_cache_dtype=auto",))
    # The explicit engine argument became the setting of that name and stands; the profile fills the rest.
    assert (effective.quantization, effective.kv_cache_dtype) == ("fp8", "auto")
    assert effective.engine_args == {"watermark": 0.05}
    assert effective.gpu_memory_utilization == 0.5
    # The tiny model's bf16 KV (2 layers x 2 heads x 32 x 2 x 2 bytes) in 64 MiB, at 64 tokens a sequence.
    assert effective.max_num_seqs == 512
