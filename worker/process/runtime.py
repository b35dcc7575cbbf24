"""Building a worker's parts from settings: the engine (once per process) and the pipeline around it."""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from vlmbatch.media.stores import ObjectStores
from vlmbatch.schema.contracts.settings import Settings
from vlmbatch.worker.engines.base import Engine
from vlmbatch.worker.pipeline.pipeline import Pipeline
from vlmbatch.worker.transport.publisher import Publisher


def build_engine(settings: Settings) -> Engine:
    """The engine `VLMBATCH_ENGINE` names. Heavy imports happen here, never at import time."""
    if settings.engine == "fake":
        from vlmbatch.worker.engines.fake import FakeBehaviour, FakeEngine

        behaviour = FakeBehaviour(
            trace_tokens=settings.fake_trace_tokens,
            latency_s=settings.fake_latency_s,
            tokens_per_second=settings.fake_tokens_per_second,
            max_model_len=settings.max_model_len or 32768,
            loop_marker=settings.fake_loop_marker,
        )
        return FakeEngine(settings.model, behaviour)
    if settings.engine == "vllm":
        from vlmbatch.worker.engines.thread import EngineThread
        from vlmbatch.worker.engines.vllm_engine import VllmEngine

        return EngineThread(VllmEngine(settings))
    if settings.engine == "openai":
        # No engine thread: the HTTP streams are light work for the pipeline's loop.
        from vlmbatch.worker.engines.openai import OpenAIEngine

        return OpenAIEngine(settings)
    raise NotImplementedError(f"engine {settings.engine!r} is not available in this build")


def build_pipeline(
    settings: Settings, *, sessions: sessionmaker[Session], publisher: Publisher, engine: Engine | None = None
) -> Pipeline:
    return Pipeline(
        settings=settings,
        engine=engine or build_engine(settings),
        sessions=sessions,
        store=ObjectStores.from_settings(settings),
        publisher=publisher,
        worker_id=settings.resolved_worker_id(),
    )
