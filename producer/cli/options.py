"""Flags shared by `submit` and `run`: the question and the run's model and sampling settings."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from pydantic import ValidationError

from vlmbatch.schema.models import (
    DEFAULT_MAX_TOKENS,
    DEFAULT_REPETITION_PENALTY,
    DEFAULT_TEMPERATURE,
    DEFAULT_TOP_P,
    RunSettings,
    SamplingSettings,
)

F = TypeVar("F", bound=Callable[..., Any])
# The runs.name column's width.
MAX_RUN_NAME_CHARS = 200


class FiniteFloat(click.FloatRange):
    """A float range that refuses NaN and infinity (which compare false against every bound)."""

    name = "finite float"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


def _run_name(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Refuse names that would be ambiguous (all digits: a run id), too long to store, or unprintable."""
    if value is None:
        return None
    if not value.strip():
        raise click.BadParameter("is empty", ctx, param)
    if value.isdigit():
        raise click.BadParameter("may not be all digits (it would read as a run id)", ctx, param)
    if len(value) > MAX_RUN_NAME_CHARS:
        raise click.BadParameter(f"is {len(value)} characters long, over {MAX_RUN_NAME_CHARS}", ctx, param)
    if any(not ch.isprintable() for ch in value):
        raise click.BadParameter("may not hold control characters", ctx, param)
    return value


def run_options(fn: F) -> F:
    options = [
        click.option("--question", "-q", help="The question asked about every image."),
        click.option(
            "--question-file",
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            help="Read the question from a file (for long prompts).",
        ),
        click.option(
            "--run",
            "run_name",
            callback=_run_name,
            help="Run name (default: derived from source, question and settings); not all digits.",
        ),
        click.option("--model", help="Model id or local folder [env VLMBATCH_MODEL]."),
        click.option("--max-tokens", type=click.IntRange(1), default=DEFAULT_MAX_TOKENS, show_default=True),
        click.option("--temperature", type=FiniteFloat(0, 5), default=DEFAULT_TEMPERATURE, show_default=True),
        click.option("--top-p", type=FiniteFloat(0, 1, min_open=True), default=DEFAULT_TOP_P, show_default=True),
        click.option(
            "--repetition-penalty",
            type=FiniteFloat(0, 5, min_open=True),
            default=DEFAULT_REPETITION_PENALTY,
            show_default=True,
        ),
        click.option("--samples", type=click.IntRange(1), default=1, show_default=True, help="Samples per job."),
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
        click.option("--ignore-eos", is_flag=True, hidden=True, help="Benchmarks: always generate max tokens."),
        click.option("--queue", help="Broker queue [env VLMBATCH_QUEUE]."),
        click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def resolve_question(question: str | None, question_file: Path | None) -> str | None:
    if question and question_file:
        raise click.UsageError("give --question or --question-file, not both")
    if question_file is not None:
        try:
            question = question_file.read_text(encoding="utf-8").strip()
        except UnicodeDecodeError as exc:
            raise click.UsageError(f"{question_file} is not valid UTF-8 (byte {exc.start})") from exc
        if not question:
            raise click.UsageError(f"{question_file} is empty")
    if question is not None and "\x00" in question:
        raise click.UsageError("the question holds a NUL character")
    return question


def build_run_settings(default_model: str, **flags: Any) -> RunSettings:
    """The run's settings from the flags. Raises click.UsageError (one line) for any invalid value."""
    try:
        return _build_run_settings(default_model, **flags)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "settings"
        raise click.UsageError(f"invalid {where}: {first['msg']}") from exc


def _build_run_settings(default_model: str, **flags: Any) -> RunSettings:
    sampling = SamplingSettings(
        temperature=flags["temperature"],
        top_p=flags["top_p"],
        repetition_penalty=flags["repetition_penalty"],
        max_tokens=flags["max_tokens"],
        samples=flags["samples"],
        ignore_eos=flags["ignore_eos"],
    )
    if flags["accept"] and not flags["grader"]:
        raise click.UsageError("--accept needs a --grader to tell correct samples")
    if flags["choices"] and flags["json_schema"]:
        raise click.UsageError("give --choices or --json-schema, not both")
    choices = None
    if flags["choices"]:
        choices = tuple(c.strip() for c in flags["choices"].split(",") if c.strip())
        if not choices:
            raise click.UsageError("--choices is empty")
    json_schema = None
    if flags["json_schema"]:
        try:
            json_schema = json.loads(flags["json_schema"].read_text(encoding="utf-8"))
        except ValueError as exc:
            raise click.UsageError(f"{flags['json_schema']} is not valid JSON: {exc}") from exc
        if not isinstance(json_schema, dict):
            raise click.UsageError(
                f"{flags['json_schema']}: a JSON schema must be an object, not {type(json_schema).__name__}"
            )
    return RunSettings(
        model=flags["model"] or default_model,
        sampling=sampling,
        max_images_per_prompt=flags["max_images"],
        max_tiles=flags["max_tiles"],
        max_attempts=flags["max_attempts"],
        grader=flags["grader"],
        accept=flags["accept"],
        choices=choices,
        json_schema=json_schema,
    )
