"""Shared by the benchmarks: the image workload and the raw-vLLM baseline, measured the same way on CPU
and on the GPU.

Raw vLLM is what a one-off script does: build `LLM`, hand it every request at once, wait. Its tokens/s
are generated tokens over the wall time of that call (preprocessing included). The pipeline is measured
over the same span in the ledger: first claim to last committed result."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

QUESTION = "Describe this image in detail."


def write_images(folder: Path, sizes: Sequence[tuple[int, int]], count: int) -> list[Path]:
    """`count` distinct drawn images cycling through `sizes` (distinct, so no prefix cache hits), in a
    folder holding nothing else."""
    import shutil

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    paths = []
    for i in range(count):
        width, height = sizes[i % len(sizes)]
        image = Image.new("RGB", (width, height), ((i * 37) % 255, (i * 91) % 255, (i * 53) % 255))
        draw = ImageDraw.Draw(image)
        x, y = (i * 7) % (width // 2), (i * 5) % (height // 2)
        draw.rectangle((x, y, x + width // 2, y + height // 2), fill=(255 - i % 255, 120, 30))
        draw.text((8, 8), f"bench image {i}", fill=(255, 255, 255))
        path = folder / f"img-{i:05d}.jpg"
        image.save(path, quality=90)
        paths.append(path)
    return paths


@dataclass(frozen=True)
class Measured:
    label: str
    requests: int
    wall_s: float
    output_tokens: int
    prompt_tokens: int

    @property
    def output_tps(self) -> float:
        return self.output_tokens / self.wall_s

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.wall_s


def raw_vllm_chat(
    llm: Any, images: Sequence[Path], *, max_tokens: int, max_tiles: int, choices: Sequence[str] | None = None
) -> Measured:
    """All requests at once through `LLM.chat`, as a hand-written script would."""
    from vllm import SamplingParams

    extra: dict[str, Any] = {}
    if choices:
        from vllm.sampling_params import StructuredOutputsParams

        extra["structured_outputs"] = StructuredOutputsParams(choice=list(choices))
    params = SamplingParams(
        temperature=0.6,
        top_p=0.95,
        repetition_penalty=1.05,
        max_tokens=max_tokens,
        ignore_eos=choices is None,
        **extra,
    )
    conversations: list[Any] = []
    started = time.perf_counter()
    for path in images:  # decoding is part of what the script does
        with Image.open(path) as opened:
            image = opened.convert("RGB")
        conversations.append(
            [
                {
                    "role": "user",
                    "content": [{"type": "image_pil", "image_pil": image}, {"type": "text", "text": QUESTION}],
                }
            ]
        )
    outputs = llm.chat(conversations, params, use_tqdm=False, mm_processor_kwargs={"max_dynamic_patch": max_tiles})
    wall = time.perf_counter() - started
    return Measured(
        label="raw vLLM LLM.chat",
        requests=len(outputs),
        wall_s=wall,
        output_tokens=sum(len(c.token_ids) for o in outputs for c in o.outputs),
        prompt_tokens=sum(len(o.prompt_token_ids or ()) for o in outputs),
    )


def ledger_span(database_url: str, run_id: int, label: str) -> Measured:
    """The pipeline's throughput over its own span in the ledger: first claim to last committed result."""
    from sqlalchemy import func, select

    from vlmbatch.schema.ledger.database import open_ledger
    from vlmbatch.schema.ledger.tables import Attempt, Job

    _, sessions = open_ledger(database_url, auto_migrate=False)
    with sessions() as session:
        first, last, jobs = session.execute(
            select(func.min(Attempt.started_at), func.max(Job.finished_at), func.count(func.distinct(Job.id)))
            .join(Job, Job.id == Attempt.job_id)
            .where(Job.run_id == run_id)
        ).one()
        completion, prompt = session.execute(
            select(func.sum(Attempt.completion_tokens), func.sum(Attempt.prompt_tokens))
            .join(Job, Job.id == Attempt.job_id)
            .where(Job.run_id == run_id)
        ).one()
    return Measured(
        label=label,
        requests=jobs,
        wall_s=(last - first).total_seconds(),
        output_tokens=int(completion or 0),
        prompt_tokens=int(prompt or 0),
    )


def table(rows: Sequence[Measured], baseline: Measured) -> str:
    header = f"{'path':<44} {'requests':>8} {'wall s':>8} {'out tok/s':>10} {'req/s':>7} {'ratio':>6}"
    lines = [header, "-" * len(header)]
    for row in rows:
        lines.append(
            f"{row.label:<44} {row.requests:>8} {row.wall_s:>8.1f} {row.output_tps:>10.1f} "
            f"{row.requests_per_s:>7.2f} {row.output_tps / baseline.output_tps:>6.3f}"
        )
    return "\n".join(lines)


def wait_for_run(database_url: str, run_id: int, *, timeout: float) -> None:
    """Poll the ledger until none of the run's jobs is queued or running."""
    from sqlalchemy import func, select

    from vlmbatch.schema.ledger.database import open_ledger
    from vlmbatch.schema.ledger.tables import Job

    _, sessions = open_ledger(database_url, auto_migrate=False)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with sessions() as session:
            pending = session.scalar(
                select(func.count()).select_from(Job).where(Job.run_id == run_id, Job.state.in_(["queued", "running"]))
            )
        if pending == 0:
            return
        time.sleep(0.5)
    raise TimeoutError(f"run {run_id} did not finish in {timeout}s")


def run_and_exit(main: Callable[[], int]) -> None:
    """Run a benchmark's `main` and end the process hard: vLLM can leave threads behind that would keep
    a finished process (and a device call) alive."""
    import os
    import sys
    import traceback

    status = 1
    try:
        status = main()
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
