"""`vlmbatch demo`."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import click

from vlmbatch.producer.cli import cli


@cli.command("demo")
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path), help="Keep everything here.")
@click.option("--engine", type=click.Choice(["vllm", "fake"]), default="vllm", show_default=True)
@click.option("--max-tokens", type=click.IntRange(1), default=48, show_default=True)
def demo_command(directory: Path | None, engine: str, max_tokens: int) -> None:
    """Run sample images (two broken on purpose) through the tiny local model: no server, no network."""
    from vlmbatch.producer.cli.demo_assets import DEMO_QUESTION, demo_environment, write_sample_images

    folder = directory or Path(tempfile.mkdtemp(prefix="vlmbatch-demo-"))
    os.environ.update(demo_environment(folder))
    started = time.monotonic()
    click.echo(f"demo folder: {folder}", err=True)
    if engine == "vllm":
        from vlmbatch.worker.smoke_model import build_model_folder

        model = build_model_folder(folder / "smoke-model")
        click.echo(f"built the smoke model (Skywork-R1V3 architecture, random weights) in {model}", err=True)
        os.environ.update(
            {
                "VLMBATCH_MODEL": str(model),
                "VLMBATCH_TRUST_REMOTE_CODE": "true",  # our own configuration module, written just now
                "VLMBATCH_ENFORCE_EAGER": "true",
                "VLMBATCH_MAX_MODEL_LEN": "8192",
                "VLMBATCH_MAX_NUM_SEQS": "16",
                "VLMBATCH_KV_CACHE_BYTES": str(512 * 2**20),
            }
        )
    else:
        os.environ["VLMBATCH_MODEL"] = "fake-model"
    os.environ["VLMBATCH_ENGINE"] = engine
    images = folder / "images"
    write_sample_images(images)
    click.echo(f"wrote sample images into {images}; starting the engine (about a minute on 2 cores)", err=True)

    from vlmbatch.producer.cli.submit import run_command

    ctx = click.get_current_context()
    ctx.invoke(
        run_command,
        source=str(images),
        question=(DEMO_QUESTION,),
        max_tokens=max_tokens,
        model=os.environ["VLMBATCH_MODEL"],
    )
    click.echo(f"demo finished in {time.monotonic() - started:.0f}s; results in {folder / '.vlmbatch'}", err=True)
