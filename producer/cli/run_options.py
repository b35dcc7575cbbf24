"""The run's flags (`submit`, `run`): its name, model, limits, grading and answer constraints, its place
on the queue, how each job is sampled, and how the command reports; with what is asked and how SOURCE is
read, `run_options` puts them all on a command."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from pydantic import ValidationError

from vlmbatch.producer.cli.asked_options import AskedOptions, asked_options
from vlmbatch.producer.cli.options import F, FiniteFloat, non_blank, option_group, run_name
from vlmbatch.producer.cli.source_options import source_options
from vlmbatch.schema.contracts.model_identity import canonical_model
from vlmbatch.schema.contracts.models import (
    DEFAULT_MAX_TOKENS,
    DEFAULT_REPETITION_PENALTY,
    DEFAULT_TEMPERATURE,
    DEFAULT_TOP_P,
    REPETITION_PRESETS,
    RepetitionDetection,
    RunSettings,
    SamplingSettings,
)


@dataclass(frozen=True)
class SamplingOptions:
    max_tokens: int
    temperature: float
    top_p: float
    repetition_penalty: float
    repetition_detection: str | None
    thinking_budget: int | None
    samples: int
    ignore_eos: bool

    def settings(self) -> SamplingSettings:
        """The run's sampling. Raises click.UsageError for a bad --repetition-detection, ValidationError
        for values the settings refuse."""
        return SamplingSettings(
            temperature=self.temperature,
            top_p=self.top_p,
            repetition_penalty=self.repetition_penalty,
            max_tokens=self.max_tokens,
            samples=self.samples,
            ignore_eos=self.ignore_eos,
            repetition_detection=repetition_detection(self.repetition_detection),
            thinking_token_budget=self.thinking_budget,
        )


@dataclass(frozen=True)
class RunOptions:
    run_name: str | None
    model: str | None
    max_tiles: int
    max_images: int
    max_attempts: int
    grader: str | None
    accept: int | None
    choices: str | None
    json_schema: Path | None
    queue: str | None
    priority: int | None
    weight: int | None


@dataclass(frozen=True)
class OutputOptions:
    as_json: bool


sampling_options = option_group(
    "sampling",
    SamplingOptions,
    [
        click.option("--max-tokens", type=click.IntRange(1), default=DEFAULT_MAX_TOKENS, show_default=True),
        click.option("--temperature", type=FiniteFloat(0, 5), default=DEFAULT_TEMPERATURE, show_default=True),
        click.option("--top-p", type=FiniteFloat(0, 1, min_open=True), default=DEFAULT_TOP_P, show_default=True),
        click.option(
            "--repetition-penalty",
            type=FiniteFloat(0, 5, min_open=True),
            default=DEFAULT_REPETITION_PENALTY,
            show_default=True,
        ),
        click.option(
            "--repetition-detection",
            metavar="PRESET|JSON",
            help="Stop a sample that loops (finish `repetition`, job truncated): a preset ("
            + ", ".join(REPETITION_PRESETS)
            + ') or vLLM\'s object, e.g. \'{"max_pattern_size": 256, "min_pattern_size": 16, "min_count": 4}\'.',
        ),
        click.option(
            "--thinking-budget",
            type=click.IntRange(0),
            help="At most this many tokens of trace; then `</think>` is forced and the model answers "
            "(vLLM's thinking_token_budget; the result is flagged thinking_capped).",
        ),
        click.option(
            "--samples",
            "--n",
            "samples",
            type=click.IntRange(1),
            default=1,
            show_default=True,
            help="Samples per job (--n: vLLM's and OpenAI's name).",
        ),
        click.option("--ignore-eos", is_flag=True, hidden=True, help="Benchmarks: always generate max tokens."),
    ],
)

the_run_options = option_group(
    "run",
    RunOptions,
    [
        click.option(
            "--run",
            "run_name",
            callback=run_name,
            help="Run name (default: derived from source, question and settings); not all digits.",
        ),
        click.option("--model", help="Model id or local folder [env VLMBATCH_MODEL]."),
        click.option("--max-tiles", type=click.IntRange(1), default=12, show_default=True, help="Tiles per image."),
        click.option(
            "--max-images", type=click.IntRange(1), default=4, show_default=True, help="Images per job at most."
        ),
        click.option("--max-attempts", type=click.IntRange(1), default=3, show_default=True),
        click.option(
            "--grader",
            type=click.Choice(["choice", "numeric", "exact", "boxed"]),
            help="Grade each answer against the job's `reference`.",
        ),
        click.option(
            "--accept",
            type=click.IntRange(1),
            help="Keep sampling a job (up to --max-attempts rounds) until this many correct samples exist.",
        ),
        click.option("--choices", help='Constrain the answer to one of these, e.g. "cat,dog,other".'),
        click.option(
            "--json-schema",
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            help="Constrain the answer to JSON matching this schema file.",
        ),
        click.option("--queue", callback=non_blank, help="Broker queue [env VLMBATCH_QUEUE]."),
        click.option(
            "--priority",
            type=click.IntRange(-1000, 1000),
            default=None,
            help="Workers take from higher-priority runs of a queue first [default: 0; a reused run keeps its own].",
        ),
        click.option(
            "--weight",
            type=click.IntRange(1, 1000),
            default=None,
            help="This run's share of a priority's workers, relative to the other runs' [default: 1].",
        ),
    ],
)

output_options = option_group(
    "output", OutputOptions, [click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")]
)


def run_options(fn: F) -> F:
    """Every flag of a submit: what is asked, how SOURCE is read, the run, its sampling, the output."""
    for group in (output_options, sampling_options, the_run_options, source_options, asked_options):
        fn = group(fn)
    return fn


def build_run_settings(
    default_model: str, *, asked: AskedOptions, run: RunOptions, sampling: SamplingOptions
) -> RunSettings:
    """The run's settings from the flags. Raises click.UsageError (one line) for any invalid value."""
    try:
        return _build_run_settings(default_model, asked=asked, run=run, sampling=sampling)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "settings"
        raise click.UsageError(f"invalid {where}: {first['msg']}") from exc


def _build_run_settings(
    default_model: str, *, asked: AskedOptions, run: RunOptions, sampling: SamplingOptions
) -> RunSettings:
    sampled = sampling.settings()
    if run.accept and not run.grader:
        raise click.UsageError("--accept needs a --grader to tell correct samples")
    if run.choices and run.json_schema:
        raise click.UsageError("give --choices or --json-schema, not both")
    choices = None
    if run.choices is not None:
        choices = tuple(c.strip() for c in run.choices.split(",") if c.strip())
        if not choices:
            raise click.UsageError("--choices is empty")
    json_schema = _json_schema(run.json_schema) if run.json_schema else None
    return RunSettings(
        model=canonical_model(run.model or default_model),
        sampling=sampled,
        max_images_per_prompt=run.max_images,
        max_tiles=run.max_tiles,
        max_attempts=run.max_attempts,
        grader=run.grader,
        accept=run.accept,
        choices=choices,
        json_schema=json_schema,
        system_prompt=asked.system_turn(),
    )


def _json_schema(path: Path) -> dict[str, Any]:
    try:
        json_schema = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise click.UsageError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(json_schema, dict):
        raise click.UsageError(f"{path}: a JSON schema must be an object, not {type(json_schema).__name__}")
    return json_schema


def repetition_detection(value: str | None) -> RepetitionDetection | None:
    """`--repetition-detection`: a preset's name, `off`, or vLLM's object as JSON. Raises click.UsageError."""
    if value is None or value.strip() == "off":
        return None
    name = value.strip()
    if name in REPETITION_PRESETS:
        return REPETITION_PRESETS[name]
    try:
        given = json.loads(name)
    except ValueError:
        given = None
    if not isinstance(given, dict):
        presets = ", ".join(REPETITION_PRESETS)
        raise click.UsageError(f"--repetition-detection {value!r}: give a preset ({presets}), off, or a JSON object")
    try:
        return RepetitionDetection.model_validate(given)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise click.UsageError(f"--repetition-detection: {where + ': ' if where else ''}{first['msg']}") from exc
