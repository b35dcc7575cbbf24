"""What is asked (`submit`, `run`): the questions (`-q`, `--question-file`, `--questions-file`), the prompt
template and the system turn, read once into the sources' `Prompting` and the run's system prompt."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import click

from vlmbatch.producer.cli.options import option_group, read_text
from vlmbatch.producer.sources.prompts import Prompting, PromptTemplate


@dataclass(frozen=True)
class AskedOptions:
    question: tuple[str, ...]
    question_file: Path | None
    questions_file: Path | None
    prompt_template: Path | None
    system_prompt: str | None
    system_prompt_file: Path | None

    def prompting(self) -> Prompting:
        """The questions and the template, read and checked. Raises click.UsageError (one line) for a bad
        combination or file, SourceError for a template that does not parse."""
        questions = resolve_questions(self.question, self.question_file, self.questions_file)
        template = PromptTemplate.from_file(self.prompt_template) if self.prompt_template else None
        return Prompting(questions=questions, template=template)

    def system_turn(self) -> str | None:
        """The system prompt of every job. Raises click.UsageError (one line)."""
        return resolve_system_prompt(self.system_prompt, self.system_prompt_file)


asked_options = option_group(
    "asked",
    AskedOptions,
    [
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
    ],
)


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
        given.append(read_text(question_file))
    if questions_file is not None:
        from_file = [line.strip() for line in read_text(questions_file).splitlines() if line.strip()]
        given.extend(from_file)
    return tuple(dict.fromkeys(given))


def resolve_system_prompt(system_prompt: str | None, system_prompt_file: Path | None) -> str | None:
    if system_prompt and system_prompt_file:
        raise click.UsageError("give --system-prompt or --system-prompt-file, not both")
    if system_prompt_file is not None:
        return read_text(system_prompt_file)
    if system_prompt is not None and not system_prompt.strip():
        raise click.UsageError("--system-prompt is empty")
    return system_prompt
