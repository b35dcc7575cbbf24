"""The records of the training formats, `sft` (LLaMA-Factory's ShareGPT `messages`) and `internvl`
(InternVL's `conversations`), built from one exported sample and the paths its images were written to.

Both hold, for every run, the same keys with the same types (no field is null in one run and typed in
another), so any set of exports loads in one `datasets.load_dataset("json", data_files=[...])`:

- the turns: a system turn first whenever the job had one (its own, or the run's `--system-prompt`),
  the user turn with one `<image>` per image where the job's text placed it (`<image N>`, `<image>`),
  else the images first, and the reply `<think>\\ntrace\\n</think>\\n\\nanswer`;
- `id` (the source row's own id, '' when it had none), `custom_id`, `source_images` (the URIs the job
  read, in the job's order), the run and the sample (`run`, `run_id`, `job_id`, `attempt_id`,
  `sample_index`), `finish_reason` ('' when unknown), `trace_closed`, `graded` and `correct` (False
  unless graded correct), `valid` (False only when the answer broke the run's constraint),
  `completion_tokens`.

`<image>` appears exactly once per image: the consumers pair the n-th token with the n-th image and drop
(LLaMA-Factory) or fail (InternVL) a record whose counts differ, so a literal `<image>` anywhere else (a
system prompt, a trace, a question whose placeholders do not match) is written as `< image>`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from vlmbatch.producer.reports.fields import ExportRecord
from vlmbatch.producer.reports.identity import CustomIds, row_id
from vlmbatch.schema.contracts.placement import PlaceholderMismatch, UserPart, user_layout
from vlmbatch.schema.contracts.reasoning import join_trace

IMAGE_TOKEN = "<image>"
_DEFUSED = "< image>"


def defuse(text: str) -> str:
    """`text` with no literal image token left in it."""
    return text.replace(IMAGE_TOKEN, _DEFUSED)


def user_parts(question: str, image_count: int) -> tuple[tuple[UserPart, ...], bool]:
    """The user turn in order (text pieces and image indexes), and whether the job's text placed the
    images. A text whose placeholders do not match its images (a job older than placeholders) gets its
    images first, as it was sent."""
    try:
        parts = user_layout(question, image_count)
    except PlaceholderMismatch:
        return (*range(image_count), question), False
    placed = not (parts[:image_count] == tuple(range(image_count)) and parts[image_count:] == (question,))
    return parts, placed


def sft_record(record: ExportRecord, image_paths: Sequence[str], *, custom_id: str | None = None) -> dict[str, Any]:
    """The `sft` record of one sample whose images were written to `image_paths` (in the job's order).
    `custom_id`: the job's in its export (identity.CustomIds); by default the job's own or `job-<id>`."""
    parts, _ = user_parts(record["question"], len(image_paths))
    prompt = "".join(IMAGE_TOKEN if isinstance(part, int) else defuse(part) for part in parts)
    trace = defuse((record["reasoning"] or "").strip())
    reply = join_trace(trace, defuse(record["answer"]), closed=record["trace_closed"])
    messages = (
        [{"role": "system", "content": defuse(record["system"]), "reasoning_content": ""}] if record["system"] else []
    )
    messages += [
        {"role": "user", "content": prompt, "reasoning_content": ""},
        {"role": "assistant", "content": reply, "reasoning_content": trace},
    ]
    images = [image_paths[part] for part in parts if isinstance(part, int)]
    return {"messages": messages, "images": images, **_identity(record, custom_id)}


def internvl_record(
    record: ExportRecord, image_paths: Sequence[str], *, custom_id: str | None = None
) -> dict[str, Any]:
    """The `internvl` record of one sample. `image` is always a list (InternVL's multi-image path, which
    counts `<image>` against it and never adds one), so every record has one type."""
    parts, placed = user_parts(record["question"], len(image_paths))
    if placed:
        prompt = "".join(IMAGE_TOKEN if isinstance(part, int) else defuse(part) for part in parts)
    elif len(image_paths) == 1:
        prompt = f"{IMAGE_TOKEN}\n{defuse(record['question'])}"
    else:  # InternVL's own multi-image convention
        numbered = "".join(f"Image-{n}: {IMAGE_TOKEN}\n" for n in range(1, len(image_paths) + 1))
        prompt = numbered + defuse(record["question"])
    reply = join_trace(defuse(record["reasoning"] or ""), defuse(record["answer"]), closed=record["trace_closed"])
    turns = [{"from": "system", "value": defuse(record["system"])}] if record["system"] else []
    turns += [{"from": "human", "value": prompt}, {"from": "gpt", "value": reply}]
    images = [image_paths[part] for part in parts if isinstance(part, int)]
    identity = _identity(record, custom_id, id_=False)
    return {"id": row_id(record["metadata"]), "image": images, "conversations": turns, **identity}


def _identity(record: ExportRecord, custom_id: str | None, *, id_: bool = True) -> dict[str, Any]:
    head = {"id": row_id(record["metadata"])} if id_ else {}
    if custom_id is None:
        custom_id = CustomIds().of_job(record["job_id"], record["metadata"])
    return head | {
        "custom_id": custom_id,
        "source_images": list(record["images"]),
        "run": record["run"],
        "run_id": record["run_id"],
        "job_id": record["job_id"],
        # (job, attempt, sample) identifies a sample: accept-until-M rounds reuse sample indexes.
        "attempt_id": record["attempt_id"],
        "sample_index": record["sample_index"],
        "finish_reason": record["finish_reason"] or "",
        "trace_closed": record["trace_closed"],
        "graded": record["correct"] is not None,
        "correct": record["correct"] is True,
        # False only when the answer broke the run's constraint (--choices, --json-schema).
        "valid": record["valid"] is not False,
        "completion_tokens": record["completion_tokens"],
    }
