"""How SOURCE is read (`submit`, `run`): which columns hold the images, question and reference, where
embedded images are staged, a dataset folder's config and split, and what a row that cannot become a job
does to the submit."""

from __future__ import annotations

from dataclasses import dataclass

import click

from vlmbatch.producer.cli.options import option_group
from vlmbatch.producer.sources.base import RejectPolicy
from vlmbatch.producer.sources.parquet import ColumnChoice


@dataclass(frozen=True)
class SourceOptions:
    image_column: str | None
    question_column: str
    reference_column: str
    stage_to: str | None
    dataset_config: str | None
    dataset_split: str | None
    strict: bool
    max_rejects: int | None

    def columns(self) -> ColumnChoice:
        """The image, question and reference columns the flags name. Raises click.UsageError."""
        images = None
        if self.image_column is not None:
            images = tuple(name.strip() for name in self.image_column.split(",") if name.strip())
            if not images:
                raise click.UsageError("--image-column is empty")
        return ColumnChoice(
            image_columns=images, question_column=self.question_column, reference_column=self.reference_column
        )

    def reject_policy(self) -> RejectPolicy:
        """What the submit does with rows that cannot become jobs (--strict, --max-rejects)."""
        if self.strict and self.max_rejects is not None:
            raise click.UsageError("--max-rejects does not apply with --strict (no row may be rejected)")
        return RejectPolicy(strict=self.strict, max_rejects=self.max_rejects)

    def dataset_choice(self) -> str:
        """A dataset's config and split, when named: they make other runs than its default's."""
        named = (("dataset_config", self.dataset_config), ("dataset_split", self.dataset_split))
        return "".join(f"\n{flag}={value}" for flag, value in named if value)


source_options = option_group(
    "reading",
    SourceOptions,
    [
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
    ],
)
