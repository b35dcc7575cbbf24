"""A vLLM logits processor for the long-trace benchmark: every request ends at the output length drawn for
it, as if the model had stopped there, while the worker sees only the cap (`max_tokens`) as in a real run.

vLLM loads it into every engine, raw and pipeline alike (`logits_processors=["bench.gpu.forced_length:
ForcedLength"]`). A request's prompt carries its job tag (`[job 000123]`, in the question text); the tag is
looked up in the JSON file `BENCH_LENGTHS` names ({"000123": 2481, ...}). Until the drawn length the end
of sequence is masked (random dummy weights would otherwise end some traces by chance); at it, only the
end of sequence is allowed. A request without a known tag is left alone. Lengths may come out one token
long where vLLM's asynchronous scheduling shows the processor the output list a step late.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality

TAG = re.compile(r"\[job (\d+)\]")
# Prompt tokens decoded to find the tag: the question ends the user turn, a few template tokens follow.
TAIL_TOKENS = 64


class ForcedLength(LogitsProcessor):
    def __init__(self, vllm_config: Any, device: torch.device, is_pin_memory: bool) -> None:
        from transformers import AutoTokenizer

        model = vllm_config.model_config
        self._tokenizer = AutoTokenizer.from_pretrained(model.tokenizer, trust_remote_code=model.trust_remote_code)
        path = os.environ.get("BENCH_LENGTHS")
        self._lengths: dict[str, int] = json.loads(Path(path).read_text()) if path else {}
        self._device = device
        # Batch row -> (drawn length, end-of-sequence id, every stop id, the row's live output token list).
        self._rows: dict[int, tuple[int, int, list[int], list[int]]] = {}

    @classmethod
    def validate_params(cls, sampling_params: Any) -> None:
        return None

    def is_argmax_invariant(self) -> bool:
        return False

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is None:
            return
        for index in batch_update.removed:
            self._rows.pop(index, None)
        for index, params, prompt, output in batch_update.added:
            target = self._target(prompt)
            eos = getattr(params, "eos_token_id", None)
            if target is None or eos is None:
                self._rows.pop(index, None)
                continue
            stops = sorted({eos, *(getattr(params, "all_stop_token_ids", None) or ())})
            self._rows[index] = (target, eos, stops, output)
        for first, second, direction in batch_update.moved:
            a, b = self._rows.pop(first, None), self._rows.pop(second, None)
            if a is not None:
                self._rows[second] = a
            if b is not None and direction == MoveDirectionality.SWAP:
                self._rows[first] = b

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if not self._rows:
            return logits
        # Two batched writes per distinct stop set (one in practice), not two per row: this runs every step.
        ending: dict[int, list[int]] = {}
        masked: dict[tuple[int, ...], list[int]] = {}
        for row, (target, eos, stops, output) in self._rows.items():
            if row >= logits.shape[0]:
                continue
            if len(output) + 1 >= target:
                ending.setdefault(eos, []).append(row)
            else:
                masked.setdefault(tuple(stops), []).append(row)
        for stops, rows in masked.items():
            index = torch.tensor(rows, device=logits.device)
            logits[index.unsqueeze(1), torch.tensor(stops, device=logits.device).unsqueeze(0)] = float("-inf")
        for eos, rows in ending.items():
            index = torch.tensor(rows, device=logits.device)
            logits[index] = float("-inf")
            logits[index, eos] = 0.0
        return logits

    def _target(self, prompt: list[int] | None) -> int | None:
        if not prompt or not self._lengths:
            return None
        text = self._tokenizer.decode(prompt[-TAIL_TOKENS:])
        found = TAG.findall(text)
        return self._lengths.get(found[-1]) if found else None
