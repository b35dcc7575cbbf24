"""A worker records vLLM's preemptions in its metrics: with a KV cache too small for its batch, vLLM
preempts requests (drops their KV, recomputes it later) and the worker's gauge counts them."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.engine.conftest import engine_settings
from tests.fixtures.bad_images import good_jpeg
from tests.integration.pipeline_helpers import running_pipeline, submit_folder
from vlmbatch.worker.engines.thread import EngineThread
from vlmbatch.worker.engines.vllm_engine import VllmEngine

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(600)]


def test_preemptions_in_a_full_kv_cache_reach_the_workers_metrics(
    sqlite_url: str, tiny_model: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(8):
        (folder / f"{i}.jpg").write_bytes(good_jpeg(448, 448, seed=i))
    # 2,048 tokens of KV (the tiny model keeps 512 bytes a token) for 8 sequences of ~270 prompt + 400 tokens.
    settings = engine_settings(tiny_model, database_url=sqlite_url, kv_cache_bytes=2**20, max_model_len=1024)
    engine = EngineThread(VllmEngine(settings))
    with running_pipeline(settings, engine=engine) as (pipeline, sessions):
        run_id = submit_folder(sessions, folder, model=str(tiny_model), max_tokens=400, ignore_eos=True)
        pipeline.feed_run(run_id).result(timeout=500)
        preemptions = pipeline.metrics.registry.get_sample_value("vlmbatch_engine_preemptions")
    assert preemptions is not None and preemptions > 0
