"""Engine arguments: parsed as vLLM's command line would, merged under the settings vlmbatch owns, and
refused in one line before any engine starts."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from vlmbatch.schema.contracts.errors import ConfigurationError
from vlmbatch.schema.contracts.settings import Settings
from vlmbatch.worker.engines.engine_args import (
    check_engine_settings,
    engine_args,
    parse_engine_arg,
    refusal,
    user_engine_args,
)
from vlmbatch.worker.smoke_model import build_model_folder


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("kv_cache_dtype=fp8", ("kv_cache_dtype", "fp8")),
        ("max-num-batched-tokens=8192", ("max_num_batched_tokens", 8192)),
        ("enable_prefix_caching=false", ("enable_prefix_caching", False)),
        (
            'speculative_config={"method": "ngram", "num_speculative_tokens": 4}',
            ("speculative_config", {"method": "ngram", "num_speculative_tokens": 4}),
        ),
        ("quantization=fp8", ("quantization", "fp8")),
        ("served_model_name=a=b", ("served_model_name", "a=b")),
    ],
)
def test_engine_args_parse_like_vllms_command_line(text: str, expected: tuple[str, Any]) -> None:
    assert parse_engine_arg(text) == expected


@pytest.mark.parametrize("text", ["kv_cache_dtype", "=fp8", ""])
def test_an_engine_arg_without_key_and_value_is_refused(text: str) -> None:
    with pytest.raises(ConfigurationError, match="KEY=VALUE"):
        parse_engine_arg(text)


def test_the_command_line_adds_to_the_environments_engine_args(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLMBATCH_ENGINE_ARGS", '{"kv_cache_dtype": "fp8", "max_num_batched_tokens": 2048}')
    merged = user_engine_args(Settings(), ("max_num_batched_tokens=8192", "quantization=fp8"))
    assert merged == {"kv_cache_dtype": "fp8", "max_num_batched_tokens": 8192, "quantization": "fp8"}


def test_settings_vlmbatch_owns_win_over_a_conflicting_engine_arg(caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings(tensor_parallel_size=2, engine_args={"tensor_parallel_size": 4, "kv_cache_dtype": "fp8"})
    with caplog.at_level(logging.WARNING):
        merged = engine_args(settings)
    assert (merged["tensor_parallel_size"], merged["kv_cache_dtype"]) == (2, "fp8")
    assert "--tensor-parallel-size" in caplog.text


def test_engine_args_are_refused_for_engines_that_take_none() -> None:
    for engine in ("fake", "openai"):
        with pytest.raises(ConfigurationError, match="in-process vllm engine"):
            check_engine_settings(Settings(engine=engine, engine_args={"kv_cache_dtype": "fp8"}))


def test_a_model_folder_with_its_own_code_needs_trust_remote_code(tmp_path: Path) -> None:
    folder = build_model_folder(tmp_path / "model", weights=False)
    with pytest.raises(ConfigurationError, match="--trust-remote-code") as refused:
        check_engine_settings(Settings(engine="vllm", model=str(folder)))
    assert "\n" not in refused.value.message
    check_engine_settings(Settings(engine="vllm", model=str(folder), trust_remote_code=True))


def test_vllms_multiline_refusals_become_one_line() -> None:
    from pydantic import BaseModel, field_validator

    class ModelConfig(BaseModel):
        max_model_len: int

        @field_validator("max_model_len")
        @classmethod
        def _fits(cls, value: int) -> int:
            raise ValueError(f"max_model_len {value} is longer than the model allows")

    with pytest.raises(Exception) as raised:
        ModelConfig(max_model_len=99999999)
    assert refusal(raised.value) == "max_model_len 99999999 is longer than the model allows"
    assert (
        refusal(RuntimeError("Engine core initialization failed.\nSee above.")) == "Engine core initialization failed."
    )


def test_the_engine_sends_no_usage_statistics_unless_the_user_asks() -> None:
    from vlmbatch.worker.engines.vllm_engine import keep_vllm_offline

    environ: dict[str, str] = {}
    keep_vllm_offline(environ)
    assert environ == {"VLLM_NO_USAGE_STATS": "1", "VLLM_DO_NOT_TRACK": "1"}
    chosen = {"VLLM_NO_USAGE_STATS": "0"}
    keep_vllm_offline(chosen)
    assert chosen["VLLM_NO_USAGE_STATS"] == "0"
