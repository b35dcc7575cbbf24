"""`vlmbatch worker` and `vlmbatch smoke-model`."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from producer.cli import cli
from producer.cli.context import load_context


@cli.command("worker")
@click.option("--engine", type=click.Choice(["vllm", "fake", "openai"]), help="[env VLMBATCH_ENGINE]")
@click.option("--model", help="Model id or folder [env VLMBATCH_MODEL].")
@click.option("--tensor-parallel-size", "-tp", type=click.IntRange(1), help="GPUs for this worker's engine.")
@click.option("--max-num-seqs", type=click.IntRange(1), help="Sequences the engine runs at once.")
@click.option("--max-model-len", type=click.IntRange(16), help="Context length.")
@click.option("--gpu-memory-utilization", type=click.FloatRange(0, 1), help="Share of GPU memory for vLLM.")
@click.option("--max-tiles", type=click.IntRange(1), help="Max tiles per image.")
@click.option("--max-images-per-prompt", type=click.IntRange(1), help="Images per prompt (limit_mm_per_prompt).")
@click.option("--trust-remote-code/--no-trust-remote-code", default=None, help="Run the model folder's code.")
@click.option("--enforce-eager/--no-enforce-eager", default=None, help="Skip CUDA graphs / torch.compile.")
@click.option("--queue", help="Broker queue to consume [env VLMBATCH_QUEUE].")
@click.option("--loglevel", default="INFO", show_default=True)
def worker_command(loglevel: str, **flags: object) -> None:
    """Run a worker: one engine, consuming the broker queue until stopped (SIGTERM: graceful)."""
    from worker.log_format import configure_logging
    from worker.main import run_celery_worker

    ctx = load_context(**flags)
    configure_logging(loglevel, fmt=ctx.settings.log_format)
    sys.exit(run_celery_worker(ctx.settings, loglevel=loglevel))


@cli.command("smoke-model")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--seed", type=int, default=0, show_default=True)
def smoke_model_command(directory: Path, seed: int) -> None:
    """Write a tiny random-weight model of Skywork-R1V3's architecture into DIRECTORY (offline, seconds)."""
    from worker.model_folder import build_model_folder

    path = build_model_folder(directory, seed=seed)
    click.echo(str(path))
