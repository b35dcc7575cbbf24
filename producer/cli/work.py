"""`vlmbatch worker` and `vlmbatch smoke-model`."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import click

from vlmbatch.producer.cli import cli
from vlmbatch.producer.cli.context import load_context
from vlmbatch.producer.cli.engine_options import EngineOptions, engine_options, with_engine_args

# This command line, as a child process runs it (the launcher starts `vlmbatch worker` once per GPU group).
VLMBATCH = (sys.executable, "-m", "vlmbatch.producer.cli")


@cli.command("worker")
@click.option("--model", help="Model id or folder [env VLMBATCH_MODEL].")
@engine_options
@click.option("--max-tiles", type=click.IntRange(1), help="Max tiles per image.")
@click.option("--max-images-per-prompt", type=click.IntRange(1), help="Images per prompt (limit_mm_per_prompt).")
@click.option("--queue", help="Broker queue to consume [env VLMBATCH_QUEUE].")
@click.option("--gpus", help="Pin this worker to these GPUs (CUDA_VISIBLE_DEVICES); TP defaults to their number.")
@click.option(
    "--log-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="vLLM's and Celery's logs go here; the terminal keeps vlmbatch's own lines [env VLMBATCH_LOG_FILE].",
)
@click.option("--verbose", is_flag=True, default=None, help="With --log-file: vLLM's warnings on the terminal too.")
@click.option("--progress-every", type=click.FloatRange(0, min_open=True), help="Seconds between progress lines.")
@click.option("--loglevel", default="INFO", show_default=True)
def worker_command(
    loglevel: str,
    gpus: str | None,
    engine: EngineOptions,
    model: str | None,
    max_tiles: int | None,
    max_images_per_prompt: int | None,
    queue: str | None,
    log_file: Path | None,
    verbose: bool | None,
    progress_every: float | None,
) -> None:
    """Run a worker: one engine, consuming the broker queue until stopped (SIGTERM: graceful)."""
    if gpus:
        import os

        from vlmbatch.worker.process.launcher import parse_gpus

        chosen = parse_gpus(gpus)
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(chosen)  # before any CUDA library is loaded
        if engine.tensor_parallel_size is None:
            engine = replace(engine, tensor_parallel_size=len(chosen))
    from vlmbatch.worker.process.main import run_celery_worker
    from vlmbatch.worker.telemetry.log_format import configure_logging

    context = load_context(
        model=model,
        max_tiles=max_tiles,
        max_images_per_prompt=max_images_per_prompt,
        queue=queue,
        log_file=log_file,
        verbose=verbose,
        progress_every=progress_every,
        **engine.settings(),
    )
    settings = with_engine_args(context.settings, engine.engine_arg)
    if settings.log_file is not None:
        settings = settings.model_copy(update={"log_file": settings.log_file.resolve()})
    configure_logging(
        loglevel,
        fmt=settings.log_format,
        worker=settings.resolved_worker_id(),
        log_file=settings.log_file,
        verbose=settings.verbose,
    )
    sys.exit(run_celery_worker(settings, loglevel=loglevel))


@cli.command("smoke-model")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--seed", type=int, default=0, show_default=True)
def smoke_model_command(directory: Path, seed: int) -> None:
    """Write a tiny random-weight model of Skywork-R1V3's architecture into DIRECTORY (offline, seconds)."""
    from vlmbatch.worker.smoke_model import build_model_folder

    path = build_model_folder(directory, seed=seed)
    click.echo(str(path))
    click.echo(f"run it: vlmbatch run IMAGES -q 'Describe the image.' --model {path} --trust-remote-code", err=True)


@cli.command("workers")
@click.option("--gpus", help="GPUs to use, e.g. 0-7 or 0,1,4,5 (default: all this host has).")
@click.option("--gpus-per-worker", type=click.IntRange(1), default=1, show_default=True, help="Tensor-parallel size.")
@click.option("--metrics-port", type=click.IntRange(1, 65535), help="First worker's port; the next get +1, +2…")
@click.option("--dry-run", is_flag=True, help="Print each worker's GPUs and settings, start nothing.")
@click.option("--loglevel", default="INFO", show_default=True)
def workers_command(
    gpus: str | None, gpus_per_worker: int, metrics_port: int | None, dry_run: bool, loglevel: str
) -> None:
    """Run one worker per group of GPUs on this host (e.g. 8 GPUs: 8 x TP=1, 4 x TP=2 or 1 x TP=8),
    restarting any that exits; SIGTERM drains them all."""
    import json
    import os
    import socket

    from vlmbatch.worker.process.launcher import parse_gpus, plan_workers, run_workers, visible_gpus
    from vlmbatch.worker.telemetry.log_format import configure_logging

    configure_logging(loglevel)
    chosen = parse_gpus(gpus) if gpus else visible_gpus()
    if not chosen:
        raise click.UsageError("no GPUs found: pass --gpus")
    try:
        plans = plan_workers(
            chosen,
            per_worker=gpus_per_worker,
            base_env=dict(os.environ),
            worker_id_prefix=socket.gethostname(),
            metrics_port=metrics_port,
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    if dry_run:
        keys = ("CUDA_VISIBLE_DEVICES", "VLMBATCH_TENSOR_PARALLEL_SIZE", "VLMBATCH_WORKER_ID", "VLMBATCH_METRICS_PORT")
        click.echo(json.dumps([{k: p.env.get(k) for k in keys} for p in plans]))
        return
    sys.exit(run_workers(plans, worker_command=[*VLMBATCH, "worker", "--loglevel", loglevel]))
