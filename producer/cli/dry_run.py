"""`--dry-run` on `submit` and `run`: what the run would be, with nothing written.

The whole source is validated as a real submit validates it, then read once: the job count, the first N
prompts as the engine would get them (`[image 1]` where an image goes), and an estimate of the prompt
tokens. Images are not opened (that is the worker's job): their share of the estimate is the upper bound
of the InternVL / R1V3 layout, `(max_tiles + 1) x 256` tokens each.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vlmbatch.producer.sources.base import Source, SpecCheck
from vlmbatch.schema.contracts.models import JobSpec, RunSettings
from vlmbatch.schema.contracts.placement import PlaceholderMismatch, has_placeholders, user_layout

# Characters per text token: BPE tokenizers of English text average ~4.
CHARS_PER_TOKEN = 4
# Tokens one 448x448 tile becomes in InternVL-style models (R1V3): 1,024 patches, pixel-shuffled by 0.5.
TOKENS_PER_TILE = 256


@dataclass
class DryRun:
    jobs: int = 0
    images: int = 0
    text_tokens: int = 0
    previews: list[str] = field(default_factory=list)

    def image_tokens_at_most(self, max_tiles: int) -> int:
        # A thumbnail tile is added to every image cut into more than one tile.
        return self.images * (max_tiles + 1) * TOKENS_PER_TILE

    def summary(self, settings: RunSettings) -> dict[str, Any]:
        return {
            "jobs": self.jobs,
            "images": self.images,
            "prompt_text_tokens_estimate": self.text_tokens,
            "prompt_image_tokens_at_most": self.image_tokens_at_most(settings.max_tiles),
            "max_output_tokens": self.jobs * settings.sampling.max_tokens * settings.sampling.samples,
            "previews": self.previews,
        }


def dry_run(source: Source, settings: RunSettings, *, preview: int, check: SpecCheck | None = None) -> DryRun:
    """Validate `source` (SourceError names every bad row) and read it once. Writes nothing."""
    source.validate(check)
    result = DryRun()
    system = len(settings.system_prompt or "")
    for spec in source.specs():
        result.jobs += 1
        result.images += len(spec.images)
        result.text_tokens += (len(spec.question) + system) // CHARS_PER_TOKEN + 1
        if len(result.previews) < preview:
            result.previews.append(rendered(spec, settings))
    return result


def rendered(spec: JobSpec, settings: RunSettings) -> str:
    """The job's turns as the engine gets them, each image shown where it goes."""
    try:
        parts = user_layout(spec.question, len(spec.images))
    except PlaceholderMismatch:
        parts = (*range(len(spec.images)), spec.question)
    after = "" if has_placeholders(spec.question) else "\n"  # images first: each on a line of its own
    user = "".join(f"[image {p + 1}: {spec.images[p]}]{after}" if isinstance(p, int) else p for p in parts)
    system = f"system: {settings.system_prompt}\n" if settings.system_prompt else ""
    return f"{system}user: {user}"


def report_lines(result: DryRun, settings: RunSettings, *, rate: float | None) -> list[str]:
    """What `--dry-run` prints: counts, estimate, previews."""
    text, image = result.text_tokens, result.image_tokens_at_most(settings.max_tiles)
    lines = [
        f"dry run: {result.jobs:,} jobs, {result.images:,} images; nothing written",
        f"prompt tokens: ~{text:,} of text ({CHARS_PER_TOKEN} characters a token) and at most {image:,} of "
        f"images ({settings.max_tiles} tiles + a thumbnail, {TOKENS_PER_TILE} tokens a tile)",
        f"output tokens: at most {result.jobs * settings.sampling.max_tokens * settings.sampling.samples:,} "
        f"(--max-tokens {settings.sampling.max_tokens} x --samples {settings.sampling.samples})",
    ]
    if rate:
        lines.append(f"at {rate:g} jobs/s: {result.jobs / rate / 3600:.2f} GPU-hours")
    for number, text_ in enumerate(result.previews, 1):
        lines.append(f"--- prompt {number}\n{text_.rstrip()}")
    return lines
