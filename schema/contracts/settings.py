"""One settings class for every process (env prefix `VLMBATCH_`, `.env` supported).

Embedded defaults need no server: a SQLite ledger and a SQLite-backed broker under `VLMBATCH_HOME`, and
the local filesystem as object store. Redis, PostgreSQL and S3 are only other values of the same settings.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from vlmbatch.schema.contracts.model_identity import canonical_model
from vlmbatch.schema.contracts.models import DEFAULT_MODEL

EngineKind = Literal["vllm", "fake", "openai"]


class Settings(BaseSettings):
    """Every setting is documented in README.md (section "Settings")."""

    model_config = SettingsConfigDict(env_prefix="VLMBATCH_", env_file=".env", extra="ignore")

    # "production" refuses to start on the embedded defaults: a fleet must name its database and broker.
    environment: Literal["development", "production"] = "development"
    # Where the embedded defaults keep their files.
    home: Path = Path(".vlmbatch")
    database_url: str | None = None
    broker_url: str | None = None
    # Celery queue the producer publishes to and workers consume (use one queue per model).
    queue: str = "vlmbatch"
    s3_endpoint_url: str | None = None
    # Create or upgrade the database schema on first use (an advisory lock serialises it on PostgreSQL).
    auto_migrate: bool = True

    # Engine.
    engine: EngineKind = "vllm"
    model: str = DEFAULT_MODEL
    tensor_parallel_size: int = Field(1, ge=1)
    max_num_seqs: int = Field(256, ge=1)
    max_model_len: int | None = Field(None, ge=16)
    gpu_memory_utilization: float = Field(0.9, gt=0.0, le=1.0)
    max_tiles: int = Field(12, ge=1)
    max_images_per_prompt: int = Field(4, ge=1)
    trust_remote_code: bool = False
    enforce_eager: bool = False
    # vLLM reasoning parser, so that a constrained answer (--choices, --json-schema) is enforced only after
    # the trace: "auto" picks deepseek_r1 when the tokenizer has `</think>` as one token; "none" turns it off.
    reasoning_parser: str = "auto"
    # Engine-level seed (per-request seeds break vLLM's CPU build).
    seed: int = 0
    # vLLM's load_format; "dummy" fills random weights (benchmarks of a model's shape without its weights).
    load_format: str | None = None
    # KV cache size in bytes, per tensor-parallel rank; None: vLLM sizes it from gpu_memory_utilization on
    # GPUs, and on vLLM's CPU build vlmbatch gives it a quarter of the free memory, at most 4 GiB, split
    # between the ranks (worker/engines/cpu_build.py).
    kv_cache_bytes: int | None = Field(None, ge=1)
    # vLLM's weight quantization (e.g. "fp8": a 38B model in bf16 leaves no KV room on one 80 GB GPU) and
    # KV cache dtype; None: the model's own.
    quantization: str | None = None
    kv_cache_dtype: str | None = None
    # Any other vLLM engine argument, as a JSON object (e.g. {"kv_cache_dtype": "fp8"}); `--engine-arg`
    # adds to it. Checked against vLLM's EngineArgs before the engine starts (worker/engines/engine_args.py).
    engine_args: dict[str, Any] = Field(default_factory=dict)
    # Engine-setting defaults by name (worker/engines/profiles.py): `default` changes nothing; `throughput` is
    # FP8 weights and KV cache, 0.95 of GPU memory and max_num_seqs sized from the KV pool. Explicit settings
    # and engine arguments win over a profile's.
    profile: Literal["default", "throughput"] = "default"
    # Tokens a sequence holds on average while it runs (prompt plus the trace so far), for sizing
    # max_num_seqs from the KV pool: a 1344x896 image (~1.8k tokens) and traces of a median 2k tokens.
    expected_context_tokens: int = Field(4096, ge=64)

    # The `openai` engine: jobs go to a running OpenAI-compatible vLLM server (worker/engines/openai/).
    # Its API root, e.g. http://host:8000/v1.
    openai_base_url: str | None = None
    # The server's --api-key, sent as a bearer token (never logged).
    openai_api_key: SecretStr | None = None
    # Seconds a request may go without a byte from the server (it may queue there that long) before the
    # server counts as hung.
    openai_timeout_seconds: float = Field(1800.0, gt=0.0)
    # How long an unreachable or overloaded server (refused, dropped, 502/503/504) is retried before the
    # worker gives up on it: engine.dead, it hands its jobs back and exits for restart.
    openai_retry_seconds: float = Field(120.0, ge=0.0)
    # How long a starting worker waits for the server to answer (a 38B model loads for minutes).
    openai_start_timeout_seconds: float = Field(600.0, ge=0.0)
    # Whether the chat template opens the `<think>` trace in the prompt; None: ask the server (/tokenize).
    trace_opened_by_prompt: bool | None = None

    # Worker.
    # Jobs the worker keeps claimed at once: in the engine plus being fetched and decoded.
    # None: twice max_num_seqs, so the engine's queue never runs dry while images load.
    inflight_jobs: int | None = Field(None, ge=1)
    jobs_per_message: int = Field(16, ge=1, le=1000)
    fetch_threads: int = Field(16, ge=1)
    lease_seconds: float = Field(120.0, gt=1.0)
    heartbeat_seconds: float = Field(30.0, gt=0.1)
    # Long enough for the longest allowed generation (a 64k-token trace at ~44 tok/s is ~25 minutes).
    visibility_timeout_seconds: int = Field(4 * 3600, ge=60)
    worker_id: str | None = None

    # Seconds a stopping worker lets in-flight jobs finish before handing the rest back.
    shutdown_grace_seconds: float = Field(20.0, ge=0.0)
    # A running attempt's output so far is written to the ledger at least this often (0: never), and
    # whenever it grew by `checkpoint_tokens`: a new attempt of the job continues it (issue 26). One
    # batched write per interval for all attempts in flight; a worker that dies loses one interval.
    checkpoint_seconds: float = Field(30.0, ge=0.0)
    checkpoint_tokens: int | None = Field(None, ge=1)
    # An engine that generates no token for this long while requests are in flight is declared hung:
    # the worker hands its jobs back and exits for restart.
    engine_hang_seconds: float = Field(300.0, gt=0.0)
    # How often each worker takes back expired leases and republishes queued jobs the broker lost.
    reconcile_seconds: float = Field(60.0, gt=0.0)
    # Queued jobs of a run count as lacking claim tokens only this long after the run's last publication
    # (a submit commits its jobs before it publishes their tokens).
    republish_grace_seconds: float = Field(30.0, ge=0.0)
    # A message delivered but unacknowledged this long counts as lost with the worker that took it.
    unacked_stale_seconds: float = Field(300.0, gt=0.0)

    # A run's circuit breaker (schema/ledger/breaker.py): it pauses a run whose attempts fail for a reason
    # not about one row (the store's credentials or network, the engine) this many times in a row, or
    # when at least `breaker_min_failures` of them make `breaker_ratio` of its last `breaker_window` attempts.
    # 50 in a row is ~17 jobs of three tries each: long past a blip, long before a night's queue is spent.
    breaker_enabled: bool = True
    breaker_streak: int = Field(50, ge=1)
    breaker_window: int = Field(500, ge=10)
    breaker_ratio: float = Field(0.2, gt=0.0, le=1.0)
    breaker_min_failures: int = Field(50, ge=1)

    # The fake engine (tests and control-plane benchmarks only).
    fake_latency_s: float = Field(0.0, ge=0.0)
    fake_tokens_per_second: float = Field(0.0, ge=0.0)
    fake_trace_tokens: int = Field(24, ge=1)
    # A question holding this text loops (tests of repetition detection).
    fake_loop_marker: str | None = None

    # Port of this process's Prometheus /metrics (worker and `vlmbatch run`); None: not served.
    metrics_port: int | None = Field(None, ge=1, le=65535)
    # Where vLLM's logs (and a worker's Celery logs) go; None: standard error. `vlmbatch run` sets one in
    # VLMBATCH_HOME/logs for each run.
    log_file: Path | None = None
    # vLLM's warnings and errors on standard error too (with a log_file).
    verbose: bool = False
    # Seconds between two plain progress lines when standard error is not a terminal (`run`, workers).
    progress_every: float = Field(30.0, gt=0.0)
    # "json" logs one JSON object per line with run/job/attempt ids (for log pipelines); "text" for people.
    log_format: Literal["text", "json"] = "text"

    # Inputs.
    # Folders local images may be read from besides the run's own source folder (`:`-separated):
    # manifests, workers and the browser refuse every other local path.
    local_roots: str = ""
    max_image_bytes: int = Field(64 * 1024 * 1024, ge=1)
    max_image_pixels: int = Field(40_000_000, ge=1)

    # Where submit stages images embedded in a source (Parquet cells, `data:` URIs) as content-addressed
    # objects: a folder or an s3:// prefix; None: `<home>/staged`. Workers must be able to read it.
    stage_to: str | None = None
    # http(s) images (media/http.py). Seconds to connect, and between two bytes of a response.
    http_connect_timeout_seconds: float = Field(10.0, gt=0.0)
    http_read_timeout_seconds: float = Field(30.0, gt=0.0)
    # The whole download, redirects included: a server trickling bytes cannot hold a fetch thread longer.
    http_total_timeout_seconds: float = Field(120.0, gt=0.0)
    # Tries of one URL on 429, 5xx and timeouts (exponential backoff) before the job fails transiently.
    http_attempts: int = Field(3, ge=1, le=20)
    # Requests in flight to one host from one worker process: be polite to the hosts of a URL list.
    http_per_host_connections: int = Field(4, ge=1)
    http_user_agent: str = "vlmbatch/0.1 (+https://github.com/vlmbatch/vlmbatch)"
    # Honour `X-Robots-Tag: noai` / `noimageai` (the job fails input.opted_out).
    http_honour_opt_out: bool = True
    # Private, loopback and link-local addresses are refused (SSRF); true for internal stores and tests.
    http_allow_private: bool = False

    # Result browser (`vlmbatch serve`): read-only pages over the ledger.
    browser_host: str = "127.0.0.1"
    browser_port: int = Field(8800, ge=0, le=65535)
    # Required on every request when set; without one, `serve` binds loopback addresses only.
    browser_token: SecretStr | None = None
    # Results per page of a run (keyset-paged: any page costs the same).
    browser_page_size: int = Field(50, ge=1, le=500)
    # Longer side of job image thumbnails, in pixels.
    browser_thumbnail_px: int = Field(512, ge=16, le=4096)

    # Batch API (`vlmbatch serve`, under /v1): accepted keys, comma-separated (`Authorization: Bearer`);
    # without keys, `serve` binds loopback addresses only.
    api_keys: SecretStr | None = None
    # A file of hashed keys, one `sha256:<hex>` per line (`#` comments allowed), besides or instead.
    api_keys_file: Path | None = None
    # Largest batch input file accepted by `POST /v1/files` (OpenAI's own limit: 200 MB).
    api_max_file_bytes: int = Field(200 * 1024 * 1024, ge=1)

    @field_validator("database_url", "broker_url", "s3_endpoint_url", "openai_base_url", "stage_to")
    @classmethod
    def _blank_is_unset(cls, value: str | None) -> str | None:
        return value or None

    @field_validator("database_url")
    @classmethod
    def _a_ledger_we_speak(cls, value: str | None) -> str | None:
        if value and value.split(":", 1)[0].split("+", 1)[0].lower() not in ("postgresql", "sqlite"):
            raise ValueError("the database URL is not valid: the ledger is PostgreSQL or SQLite")
        return value

    @field_validator("broker_url")
    @classmethod
    def _a_broker_url_that_parses(cls, value: str | None) -> str | None:
        try:
            _ = urlsplit(value).port if value else None
        except ValueError as exc:  # caught here, not as a traceback when the first message is sent
            raise ValueError(f"not a valid URL ({exc})") from None
        return value

    @field_validator("model")
    @classmethod
    def _local_model_resolved(cls, value: str) -> str:
        # `./fm` and `/abs/fm` are one model (schema/contracts/model_identity.py).
        return canonical_model(value)

    @model_validator(mode="after")
    def _production_names_its_services(self) -> Settings:
        if self.environment == "production":
            missing = [name for name in ("database_url", "broker_url") if not getattr(self, name)]
            if missing:
                names = ", ".join(f"VLMBATCH_{m.upper()}" for m in missing)
                raise ValueError(f"VLMBATCH_ENVIRONMENT=production needs {names} (no embedded defaults)")
        return self

    @model_validator(mode="after")
    def _a_lease_outlives_a_missed_beat(self) -> Settings:
        # A running job lives lease_seconds past its worker's last beat: with fewer than two beats per
        # lease, one late beat would hand a live worker's jobs to another.
        if 2 * self.heartbeat_seconds > self.lease_seconds:
            raise ValueError(
                f"VLMBATCH_HEARTBEAT_SECONDS ({self.heartbeat_seconds:g}) must be at most half of "
                f"VLMBATCH_LEASE_SECONDS ({self.lease_seconds:g})"
            )
        return self

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.home / 'vlmbatch.db').resolve()}"

    def resolved_broker_url(self) -> str:
        if self.broker_url:
            return self.broker_url
        return f"sqla+sqlite:///{(self.home / 'broker.db').resolve()}"

    def resolved_stage_to(self) -> str:
        return self.stage_to or str((self.home / "staged").resolve())

    def resolved_local_roots(self) -> tuple[Path, ...]:
        """The folders of `local_roots`, and the local folders submit stages embedded images into (its own
        content-addressed copies, which every run may read)."""
        roots = [Path(p.strip()).expanduser() for p in self.local_roots.split(os.pathsep) if p.strip()]
        stage_to = self.resolved_stage_to()
        if "://" not in stage_to:
            roots.append(Path(stage_to))
        return tuple(roots)

    def resolved_inflight_jobs(self) -> int:
        return self.inflight_jobs or 2 * self.max_num_seqs

    def resolved_worker_id(self) -> str:
        return self.worker_id or f"{socket.gethostname()}:{os.getpid()}"

    def uses_embedded_files(self) -> bool:
        return not self.database_url or not self.broker_url
