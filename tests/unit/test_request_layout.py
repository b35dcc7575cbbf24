"""The engine request's message layout on the wire (the OpenAI-compatible engine) and in the worker's
request builder: system turn, images at their placeholders, the job's own sampling and answer schema."""

from __future__ import annotations

from datetime import datetime

from PIL import Image

from vlmbatch.schema.contracts.models import RunSettings, SamplingSettings
from vlmbatch.schema.ledger.claims import ClaimedJob
from vlmbatch.worker.engines.openai.protocol import chat_body
from vlmbatch.worker.pipeline.inputs import build_request


def _job(question: str, images: int, params: dict[str, object] | None = None, **extra: object) -> ClaimedJob:
    now = datetime(2026, 12, 1)
    return ClaimedJob(
        job_id=1,
        attempt_id=2,
        attempt_number=1,
        run_id=1,
        images=tuple(f"file:///{i}.jpg" for i in range(images)),
        question=question,
        reference=None,
        overrides=extra.get("overrides"),  # type: ignore[arg-type]
        queued_at=now,
        claimed_at=now,
        params=params,
    )


def _images(*widths: int) -> list[Image.Image]:
    return [Image.new("RGB", (w, 8)) for w in widths]


def test_the_wire_request_carries_the_system_turn_and_images_where_the_text_places_them() -> None:
    job = _job("Is <image 2> like <image 1>?", 2, {"system": "Be terse.", "seed": 7})
    request = build_request(
        request_id="r", job=job, settings=RunSettings(), images=_images(10, 20), worker_max_tiles=12
    )
    body = chat_body(request, model="m", max_model_len=None)
    system, user = body["messages"]
    assert system == {"role": "system", "content": "Be terse."}
    kinds = [part["type"] if part["type"] == "image_url" else part["text"] for part in user["content"]]
    assert kinds == ["Is ", "image_url", " like ", "image_url", "?"]
    # The second image (20 px wide) is sent first, where `<image 2>` stood.
    assert [request.images[p].width for p in request.user_parts() if isinstance(p, int)] == [20, 10]
    assert body["seed"] == 7


def test_without_placeholders_the_images_come_first_and_the_run_system_prompt_applies() -> None:
    request = build_request(
        request_id="r",
        job=_job("Describe.", 2),
        settings=RunSettings(system_prompt="Run-wide."),
        images=_images(10, 20),
        worker_max_tiles=12,
    )
    assert request.user_parts() == (0, 1, "Describe.") and request.system == "Run-wide."
    user = chat_body(request, model="m", max_model_len=None)["messages"][-1]
    assert [p["type"] for p in user["content"]] == ["image_url", "image_url", "text"]


def test_a_jobs_own_sampling_and_schema_override_the_run_and_a_resubmit_budget_overrides_both() -> None:
    schema = {"type": "object"}
    run = RunSettings(sampling=SamplingSettings(max_tokens=500, temperature=0.6), choices=("a", "b"))
    params = {"max_tokens": 50, "temperature": 0.0, "samples": 3, "json_schema": schema}
    request = build_request(
        request_id="r", job=_job("q", 1, params), settings=run, images=_images(10), worker_max_tiles=12
    )
    assert (request.sampling.max_tokens, request.sampling.temperature, request.sampling.samples) == (50, 0.0, 3)
    assert request.constraint is not None and request.constraint.json_schema == schema
    assert request.constraint.choices is None
    resubmitted = _job("q", 1, params, overrides={"max_tokens": 900})
    again = build_request(request_id="r", job=resubmitted, settings=run, images=_images(10), worker_max_tiles=12)
    assert again.sampling.max_tokens == 900
