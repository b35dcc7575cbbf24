"""A remote vLLM server gets repetition detection and thinking budgets as its request body names them."""

from __future__ import annotations

from PIL import Image

from vlmbatch.schema.contracts.models import REPETITION_PRESETS, SamplingSettings
from vlmbatch.worker.engines.base import GenerationRequest
from vlmbatch.worker.engines.openai.protocol import chat_body


def _request(sampling: SamplingSettings) -> GenerationRequest:
    image = Image.new("RGB", (8, 8))
    return GenerationRequest(request_id="r", images=[image], question="q", sampling=sampling, max_tiles=1)


def test_the_body_carries_vllms_fields_only_when_set() -> None:
    plain = chat_body(_request(SamplingSettings()), model="m", max_model_len=None)
    assert "repetition_detection" not in plain and "thinking_token_budget" not in plain
    limited = SamplingSettings(repetition_detection=REPETITION_PRESETS["reasoning"], thinking_token_budget=512)
    body = chat_body(_request(limited), model="m", max_model_len=None)
    assert body["repetition_detection"] == {"max_pattern_size": 256, "min_pattern_size": 16, "min_count": 4}
    assert body["thinking_token_budget"] == 512
