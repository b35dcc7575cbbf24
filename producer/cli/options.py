"""Flags shared by `submit` and `run`: the question and the run's model and sampling settings."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from vlmbatch.producer.sources.parquet import ColumnChoice
from vlmbatch.schema.models import (
    DEFAULT_MAX_TOKENS,
    DEFAULT_REPETITION_PENALTY,
    DEFAULT_TEMPERATURE,
    DEFAULT_TOP_P,
    RunSettings,
    SamplingSettings,
)

F = TypeVar("F", bound=Callable[..., Any])


def run_options(fn: F) -> F:
    options = [
        click.option("--question", "-q", help="The question asked about every image."),
        click.option(
            "--question-file",
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            help="Read the question from a file (for long prompts).",
        ),
        click.option(
            "--image-column",
            help="Parquet: the image column(s), comma-separated, in order (default: `image`, else the "
            "columns the `huggingface` metadata marks as images).",
        ),
        click.option(
            "--question-column",
            default="question",
            show_default=True,
            help="Parquet / WebDataset: the column (or .json field, or member extension) holding the question.",
        ),
        click.option(
            "--reference-column",
            default="reference",
            show_default=True,
            help="Parquet / WebDataset: the column holding the reference answer (MMMU, MathVista: `answer`).",
        ),
        click.option(
            "--stage-to",
            help="Folder or s3:// prefix where embedded images are staged once [env VLMBATCH_STAGE_TO; "
            "default: VLMBATCH_HOME/staged].",
        ),
        click.option("--run", "run_name", help="Run name (default: derived from source, question and settings)."),
        click.option("--model", help="Model id or local folder [env VLMBATCH_MODEL]."),
        click.option("--max-tokens", type=click.IntRange(1), default=DEFAULT_MAX_TOKENS, show_default=True),
        click.option("--temperature", type=click.FloatRange(0), default=DEFAULT_TEMPERATURE, show_default=True),
        click.option("--top-p", type=click.FloatRange(0, 1), default=DEFAULT_TOP_P, show_default=True),
        click.option(
            "--repetition-penalty", type=click.FloatRange(0), default=DEFAULT_REPETITION_PENALTY, show_default=True
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
        text = question_file.read_text(encoding="utf-8").strip()
        if not text:
            raise click.UsageError(f"{question_file} is empty")
        return text
    return question


def build_run_settings(default_model: str, **flags: Any) -> RunSettings:
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


def column_choice(flags: dict[str, Any]) -> ColumnChoice:
    """The image, question and reference columns the flags name."""
    images = None
    if flags["image_column"] is not None:
        images = tuple(name.strip() for name in flags["image_column"].split(",") if name.strip())
        if not images:
            raise click.UsageError("--image-column is empty")
    return ColumnChoice(
        image_columns=images, question_column=flags["question_column"], reference_column=flags["reference_column"]
    )
