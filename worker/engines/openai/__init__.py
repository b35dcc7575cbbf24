"""An engine that sends jobs to a running OpenAI-compatible vLLM server instead of holding one in the worker.

`VLMBATCH_ENGINE=openai` + `VLMBATCH_OPENAI_BASE_URL=http://host:8000/v1`. The server is started as R1V3's
model card says (`vllm serve … --trust-remote-code --limit-mm-per-prompt '{"image": N}'`) plus
`--trust-request-mm-kwargs`, which vLLM ≥0.32 requires for the per-request tile bound (`max_dynamic_patch`);
and `--interleave-mm-strings`, which keeps images where a job's text places them (`<image N>`);
`start()` refuses a server without the former, and one that does not serve `settings.model` (runs are keyed by model
name: use `--served-model-name`).

Behaviour mirrors the in-process engine (`engines/vllm_engine.py`):
- Requests are streamed chat completions (images as base64 JPEG data URLs, `n` samples, R1V3 sampling,
  `structured_outputs` for constrained answers). Streaming gives the first-token time and keeps a 25-minute
  trace's connection busy through proxies; `stream_interval` keeps it to one chunk per ~64 tokens.
  At most `max_num_seqs` requests are open at once, over a keep-alive pool of that size.
- `return_token_ids` gives each sample's exact token count and the position of `</think>` (reasoning
  tokens). Without token ids (an older server), the usage total is split across samples by text length.
- Start the server with `--reasoning-parser deepseek_r1` (what the in-process engine's `reasoning_parser=auto`
  picks) so that a constrained answer is enforced only after the trace. Such a server returns the trace apart
  (`reasoning`): it is joined back as `reasoning</think>content`, so the pipeline splits it exactly like the
  in-process engine's text. Without a parser the content is the raw text already.
- `trace_opened_by_prompt`: the server renders R1V3's chat template through `/tokenize` once at start,
  like the in-process probe; `VLMBATCH_TRACE_OPENED_BY_PROMPT` overrides it (servers without `/tokenize`).
- `abort()` cancels the HTTP request; vLLM aborts a request whose client disconnected.
- `stats()`/`progress()` come from the server's Prometheus `/metrics`, polled every few seconds, so the
  pipeline's hang watchdog works unchanged.

Errors. 400s: `PromptTooLong` when the message says the prompt exceeds the context, else `InputUnsupported`
with the server's message. Unreachable server (connection refused or dropped, 502/503/504) is retried with
backoff for `openai_retry_seconds` (a server restart or a brief overload passes unnoticed), then raises
`EngineDead`: the worker hands its jobs back and exits, its supervisor restarts it, and the new worker's
`start()` waits for the server (`openai_start_timeout_seconds`) before claiming anything. An outage thus costs
the jobs in flight one attempt each and no other job any. We chose this over a per-job transient error: the
taxonomy has no `engine.*` error that leaves the worker running, and failing every job in flight one by one
while the server is away would spend their retries for nothing. A 500 from a server whose `/health` is fine
is that request's failure (`InternalError`); a 401/403/404 (wrong key, or the model no longer served) is a
configuration the worker cannot fix: `EngineDead`.

Modules: `engine` (lifecycle, requests, retries, refusals), `probe` (what the server is and serves),
`protocol` (request bodies, the streamed answer), `telemetry` (the server's /metrics).
"""

from vlmbatch.worker.engines.openai.engine import OpenAIEngine

__all__ = ["OpenAIEngine"]
