"""`vlmbatch.worker`: a GPU worker process, one engine, many jobs in flight.

- `engines/`: the engine seam (`base`), in-process vLLM (`vllm_engine`, its requests in `vllm_requests`, its
  stat logger in `vllm_telemetry`, `vllm_compat` for the CPU build),
  a remote OpenAI-compatible vLLM server (`openai/`), the deterministic fake, and `thread` (an engine on a
  loop of its own).
- `pipeline/`: claimed job → fetch → decode → engine → fenced write: `admission`, `attempt`, `writing`,
  `leases`, `capacity`, `watchdog`, with `pipeline` owning the jobs in flight and the lifecycle.
- `transport/`: the Celery app (`celery_app`), publishing claim tokens (`publisher`; their format is
  schema/contracts/tokens.py), reading the broker (`broker_scan`) and the `reconciler`.
- `process/`: entry points (`main`), the Celery task (`tasks`), a worker's periodic duties (`maintenance`),
  building the parts from settings (`runtime`), several workers per host (`launcher`).
- `telemetry/`: `metrics` and `log_format`.
- `smoke_model/`: the tiny random-weight model of R1V3's architecture that tests, benchmarks and the demo
  run through the real vLLM code path (`vlmbatch smoke-model DIR`).
"""
