"""What the server is: does it serve our model, does it take per-request tile bounds, and does its chat
template open the `<think>` trace in the prompt (asked once, at start)."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import httpx

from vlmbatch.schema.contracts.errors import ConfigurationError, EngineDead
from vlmbatch.schema.contracts.reasoning import THINK_CLOSE, THINK_OPEN
from vlmbatch.schema.contracts.settings import Settings
from vlmbatch.worker.engines.openai.protocol import error_message

log = logging.getLogger(__name__)

# What vLLM's refusal says when the server was started without `--trust-request-mm-kwargs`.
MM_KWARGS_REFUSED = "--trust-request-mm-kwargs"


@dataclass(frozen=True)
class TemplateFacts:
    opens_trace: bool
    think_close_id: int | None


async def wait_for_model(http: httpx.AsyncClient, *, api: str, root: str, settings: Settings) -> dict[str, Any]:
    """The model card the server lists for `settings.model`, once it answers.

    Raises EngineDead if it does not answer within `openai_start_timeout_seconds`, ConfigurationError if
    it serves another model or refuses us (a wrong URL or key does not fix itself)."""
    s = settings
    deadline = time.monotonic() + s.openai_start_timeout_seconds
    url = f"{api}/models"
    while True:
        try:
            response = await http.get(url)
        except httpx.TransportError as exc:
            problem = f"{type(exc).__name__}: {exc}"
        else:
            if response.status_code == 200:
                break
            if response.status_code < 500:  # a wrong URL or key does not fix itself: say so now
                raise ConfigurationError(f"{url} answered {response.status_code}: {error_message(response)}")
            problem = f"HTTP {response.status_code}"
        if time.monotonic() > deadline:
            raise EngineDead(
                f"the vLLM server at {root} did not answer within {s.openai_start_timeout_seconds:.0f}s: {problem}"
            )
        await asyncio.sleep(1.0)
    cards = {card["id"]: card for card in response.json().get("data", [])}
    if s.model not in cards:
        raise ConfigurationError(
            f"the vLLM server at {root} serves {sorted(cards)}, not {s.model!r}: start it with "
            f"--served-model-name {s.model} or set VLMBATCH_MODEL to the served name"
        )
    return dict(cards[s.model])


async def probe_template(http: httpx.AsyncClient, *, root: str, settings: Settings, opens_trace: bool) -> TemplateFacts:
    """Render the chat template on the server (as the in-process engine does locally): does the
    generation prompt open `<think>`, and which token closes it? Also proves the server takes
    per-request mm_processor_kwargs, which every job sends."""
    s = settings
    chat = {
        "model": s.model,
        "messages": [{"role": "user", "content": "?"}],
        "add_generation_prompt": True,
        "mm_processor_kwargs": {"max_dynamic_patch": s.max_tiles},
    }
    response = await http.post(f"{root}/tokenize", json=chat)
    if response.status_code == 404:  # a server without the tokenizer endpoints: trust the setting
        log.warning("%s has no /tokenize; trace opened by prompt: %s (setting)", root, opens_trace)
        return TemplateFacts(opens_trace=opens_trace, think_close_id=None)
    prompt_ids = probe_answer(response)["tokens"]
    rendered = await http.post(f"{root}/detokenize", json={"model": s.model, "tokens": prompt_ids})
    if s.trace_opened_by_prompt is None:
        opens_trace = str(probe_answer(rendered)["prompt"]).rstrip().endswith(THINK_OPEN)
    close = await http.post(
        f"{root}/tokenize", json={"model": s.model, "prompt": THINK_CLOSE, "add_special_tokens": False}
    )
    tokens = probe_answer(close)["tokens"]
    return TemplateFacts(opens_trace=opens_trace, think_close_id=tokens[0] if len(tokens) == 1 else None)


def probe_answer(response: httpx.Response) -> dict[str, Any]:
    """The JSON of a start-up probe; a refusal is a server set up in a way this worker cannot use."""
    if response.status_code != 200:
        message = error_message(response)
        if MM_KWARGS_REFUSED in message:
            raise ConfigurationError(f"start the vLLM server with --trust-request-mm-kwargs: {message}")
        raise ConfigurationError(f"{response.request.url} answered {response.status_code}: {message}")
    answer: dict[str, Any] = response.json()
    return answer
