"""Flags shared by commands: the questions, prompt template and system prompt, and the run's model and
sampling settings (`submit`, `run`); the engine's flags (`worker`, `run`)."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from pydantic import ValidationError

from vlmbatch.producer.api.ids import is_batch_id
from vlmbatch.producer.sources.base import RejectPolicy
from vlmbatch.producer.sources.parquet import ColumnChoice
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
from vlmbatch.schema.contracts.settings import Settings

F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger(__name__)
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


def _non_blank(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None and not value.strip():
        raise click.BadParameter("is empty", ctx, param)
    return value


def _run_name(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Refuse names that would be ambiguous (all digits: a run id), too long to store, or unprintable."""
    if value is None:
        return None
    if not value.strip():
        raise click.BadParameter("is empty", ctx, param)
    if value.isdigit():
        raise click.BadParameter("may not be all digits (it would read as a run id)", ctx, param)
    if is_batch_id(value):
        raise click.BadParameter("batch_<number> names the runs of the Batch API's batches", ctx, param)
    if len(value) > MAX_RUN_NAME_CHARS:
        raise click.BadParameter(f"is {len(value)} characters long, over {MAX_RUN_NAME_CHARS}", ctx, param)
    if any(not ch.isprintable() for ch in value):
        raise click.BadParameter("may not hold control characters", ctx, param)
    return value


def run_options(fn: F) -> F:
    options = [
        click.option(
            "--question",
            "-q",
            multiple=True,
            help="The question asked about every image; repeat it for several (one job per image and question).",
        ),
        click.option(
            "--question-file",
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            help="Read the question from a file (for long prompts).",
        ),
        click.option(
            "--questions-file",
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            help="Several questions, one per line: one job per image and question.",
        ),
        click.option(
            "--prompt-template",
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            help="A Jinja2 template rendering each job's text from its row's columns ({{ question }}, "
            "{{ options | options }}, any metadata column).",
        ),
        click.option("--system-prompt", help="The system turn of every job."),
        click.option(
            "--system-prompt-file",
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            help="Read the system prompt from a file.",
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
        click.option(
            "--config",
            "dataset_config",
            help="A dataset folder's config (its card's YAML `configs`; default: the default one).",
        ),
        click.option(
            "--split",
            "dataset_split",
            help="A dataset folder's split (Hub layouts, save_to_disk; default: train, or the only one).",
        ),
        click.option(
            "--strict",
            is_flag=True,
            help="Any row that cannot become a job refuses the whole submit (default: such rows are recorded "
            "as the run's rejects and the rest is submitted).",
        ),
        click.option(
            "--max-rejects",
            type=click.IntRange(0),
            help="Refuse the submit (nothing written) past this many rejected rows [default: 1% of the rows, "
            "at least 100].",
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
        click.option("--queue", callback=_non_blank, help="Broker queue [env VLMBATCH_QUEUE]."),
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
        click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def engine_options(fn: F) -> F:
    """The engine's flags, the same on `worker` and `run` (vLLM's own names; anything else via --engine-arg)."""
    options = [
        click.option("--engine", type=click.Choice(["vllm", "fake", "openai"]), help="[env VLMBATCH_ENGINE]"),
        click.option("--tensor-parallel-size", "-tp", type=click.IntRange(1), help="GPUs for the engine."),
        click.option("--max-num-seqs", type=click.IntRange(1), help="Sequences the engine runs at once."),
        click.option("--max-model-len", type=click.IntRange(16), help="Context length."),
        click.option("--gpu-memory-utilization", type=click.FloatRange(0, 1), help="Share of GPU memory for vLLM."),
        click.option("--trust-remote-code/--no-trust-remote-code", default=None, help="Run the model folder's code."),
        click.option("--enforce-eager/--no-enforce-eager", default=None, help="Skip CUDA graphs / torch.compile."),
        click.option("--seed", type=int, help="The engine's random seed [env VLMBATCH_SEED; default 0]."),
        click.option("--load-format", help="vLLM's load_format; dummy: random weights [env VLMBATCH_LOAD_FORMAT]."),
        click.option(
            "--kv-cache-memory-bytes",
            "kv_cache_bytes",
            type=click.IntRange(1),
            help="KV cache size per rank, bytes [env VLMBATCH_KV_CACHE_BYTES; default: vLLM's on GPUs, on "
            "vLLM's CPU build a quarter of the free memory, at most 4 GiB, split between ranks].",
        ),
        click.option(
            "--reasoning-parser",
            help="vLLM reasoning parser; auto: deepseek_r1 when the tokenizer has </think>; none: off "
            "[env VLMBATCH_REASONING_PARSER].",
        ),
        click.option("--quantization", help="Weight quantization, e.g. fp8 [env VLMBATCH_QUANTIZATION]."),
        click.option("--kv-cache-dtype", help="KV cache dtype, e.g. fp8 [env VLMBATCH_KV_CACHE_DTYPE]."),
        click.option(
            "--profile",
            type=click.Choice(["default", "throughput"]),
            help="Engine defaults: `throughput` = FP8 weights and KV cache, 0.95 of GPU memory, max_num_seqs "
            "sized from the KV pool; explicit flags and --engine-arg win [env VLMBATCH_PROFILE].",
        ),
        click.option(
            "--engine-arg",
            "engine_arg",
            multiple=True,
            metavar="KEY=VALUE",
            help="Any vLLM engine argument (JSON value), e.g. kv_cache_dtype=fp8; repeatable "
            "[env VLMBATCH_ENGINE_ARGS, a JSON object].",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


ENGINE_FLAGS = (
    "engine",
    "tensor_parallel_size",
    "max_num_seqs",
    "max_model_len",
    "gpu_memory_utilization",
    "trust_remote_code",
    "enforce_eager",
    "profile",
    "seed",
    "load_format",
    "kv_cache_bytes",
    "reasoning_parser",
    "quantization",
    "kv_cache_dtype",
)


def engine_settings(flags: dict[str, Any]) -> dict[str, Any]:
    """The settings the engine flags in `flags` give (for `load_context`); --engine-arg is applied by
    `with_engine_args` once the environment's VLMBATCH_ENGINE_ARGS is known."""
    return {name: flags.pop(name) for name in ENGINE_FLAGS if name in flags}


def with_engine_args(settings: Settings, cli_args: tuple[str, ...]) -> Settings:
    """`settings` with the --engine-arg pairs on top of VLMBATCH_ENGINE_ARGS, checked against vLLM (one line
    naming an unknown key; a model folder with its own code and no --trust-remote-code)."""
    from vlmbatch.worker.engines.engine_args import apply_engine_args, check_engine_settings, user_engine_args
    from vlmbatch.worker.engines.profiles import apply_profile, gpu_memory_bytes

    settings, warnings = apply_engine_args(settings, user_engine_args(settings, cli_args))
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)
    if settings.profile != "default" and settings.engine == "vllm":
        # After the engine arguments: what they set explicitly wins over the profile's defaults.
        settings, chosen = apply_profile(settings, gpu_bytes=gpu_memory_bytes())
        log.info("engine profile %s: %s", settings.profile, json.dumps(chosen, sort_keys=True))
    check_engine_settings(settings)
    return settings


def resolve_questions(
    questions: tuple[str, ...], question_file: Path | None, questions_file: Path | None
) -> tuple[str, ...]:
    """The questions of `-q` (repeatable) and `--questions-file` (one per line), in order, without
    duplicates; or the one long question of `--question-file`."""
    if question_file is not None and (questions or questions_file is not None):
        raise click.UsageError("--question-file is the one question: give it alone, or use -q / --questions-file")
    given = [q.strip() for q in questions]
    if any(not q for q in given):
        raise click.UsageError("a --question is empty")
    if question_file is not None:
        given.append(_read_text(question_file))
    if questions_file is not None:
        from_file = [line.strip() for line in _read_text(questions_file).splitlines() if line.strip()]
        given.extend(from_file)
    return tuple(dict.fromkeys(given))


def resolve_system_prompt(system_prompt: str | None, system_prompt_file: Path | None) -> str | None:
    if system_prompt and system_prompt_file:
        raise click.UsageError("give --system-prompt or --system-prompt-file, not both")
    if system_prompt_file is not None:
        return _read_text(system_prompt_file)
    if system_prompt is not None and not system_prompt.strip():
        raise click.UsageError("--system-prompt is empty")
    return system_prompt


def _read_text(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except UnicodeDecodeError as exc:
        raise click.UsageError(f"{path} is not valid UTF-8 (byte {exc.start})") from exc
    except OSError as exc:
        raise click.UsageError(f"{path}: cannot read ({exc.strerror})") from exc
    if not text:
        raise click.UsageError(f"{path} is empty")
    if "\x00" in text:
        raise click.UsageError(f"{path} holds a NUL character")
    return text


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
        repetition_detection=repetition_detection(flags["repetition_detection"]),
        thinking_token_budget=flags["thinking_budget"],
    )
    if flags["accept"] and not flags["grader"]:
        raise click.UsageError("--accept needs a --grader to tell correct samples")
    if flags["choices"] and flags["json_schema"]:
        raise click.UsageError("give --choices or --json-schema, not both")
    choices = None
    if flags["choices"] is not None:
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
        model=canonical_model(flags["model"] or default_model),
        sampling=sampling,
        max_images_per_prompt=flags["max_images"],
        max_tiles=flags["max_tiles"],
        max_attempts=flags["max_attempts"],
        grader=flags["grader"],
        accept=flags["accept"],
        choices=choices,
        json_schema=json_schema,
        system_prompt=resolve_system_prompt(flags["system_prompt"], flags["system_prompt_file"]),
    )


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


def reject_policy(flags: dict[str, Any]) -> RejectPolicy:
    """What the submit does with rows that cannot become jobs (--strict, --max-rejects)."""
    if flags["strict"] and flags["max_rejects"] is not None:
        raise click.UsageError("--max-rejects does not apply with --strict (no row may be rejected)")
    return RejectPolicy(strict=flags["strict"], max_rejects=flags["max_rejects"])


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
