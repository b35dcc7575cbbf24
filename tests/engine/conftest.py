"""One real vLLM CPU engine (the tiny model) shared by every engine test of the session: starting one
takes ~30 s on 2 cores, so each test builds only a pipeline (and its own ledger) around it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from vlmbatch.schema.contracts.settings import Settings
from vlmbatch.worker.engines.thread import EngineThread
from vlmbatch.worker.smoke_model import build_model_folder

MAX_MODEL_LEN = 8192


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_model_folder(tmp_path_factory.mktemp("models") / "tiny")


def engine_settings(model: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "engine": "vllm",
        "model": str(model),
        "queue": "q",  # the queue submit_folder's runs are on (claim tokens claim from the worker's queue)
        "trust_remote_code": True,
        "enforce_eager": True,
        "max_model_len": MAX_MODEL_LEN,
        "max_num_seqs": 16,
        "max_images_per_prompt": 4,
        "kv_cache_bytes": 512 * 2**20,
        "heartbeat_seconds": 1.0,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def shared_engine(tiny_model: Path) -> Iterator[EngineThread]:
    from vlmbatch.worker.engines.vllm_engine import VllmEngine

    engine = EngineThread(VllmEngine(engine_settings(tiny_model)), owned=False)
    engine.start_blocking()
    yield engine
    engine.shutdown_blocking()
