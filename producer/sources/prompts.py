"""What each job asks: the question(s) and an optional Jinja2 prompt template, applied to every row of a
source before anything is written.

- Several questions (`-q` repeated, `--questions-file`): a row that brings no question of its own becomes
  one job per question, the questions of one image next to each other (their ids are then adjacent, so a
  worker claims them together and loads the image once).
- A template (`--prompt-template FILE`) renders the user text from the row's columns: `question` (the
  row's or the command line's), `images` (the list of URIs), `image` (the first) and every metadata
  column (`options`, `query`, …). It runs in Jinja2's sandbox with `StrictUndefined`: a column the row
  lacks is an error of that row, not an empty string. `reference` is left out on purpose (the ground truth
  must not leak into the prompt). A render is bounded in output, time and loop steps (sources/sandbox.py).
  The filter `options` turns a list, or a Python-list
  string as MMMU stores it, into lettered lines `A. …`.
- Every resulting question is checked against the row's images (`<image N>` placeholders,
  schema.contracts.placement): a placeholder naming an image the row lacks is an error of that row;
  images no placeholder places go before the text, and such rows are counted (`unplaced`).

A row error names the row (`line 12: prompt template: 'options' is undefined`) and refuses the submit
like any malformed row. The rendered text is what the job stores: the ledger shows what the model saw.
"""

from __future__ import annotations

import ast
import string
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import TemplateError, Undefined

from vlmbatch.producer.sources.base import STRICT, Rejects, Row, RowSource, Source, SpecCheck, checked_rows
from vlmbatch.producer.sources.manifest import ManifestSource
from vlmbatch.producer.sources.sandbox import BoundedEnvironment
from vlmbatch.schema.contracts.errors import SourceError
from vlmbatch.schema.contracts.models import JobSpec
from vlmbatch.schema.contracts.placement import PlaceholderMismatch, has_placeholders, unplaced_images, user_layout

# The question a source gives a row that brings none when several questions or a template are asked
# (Prompting.default_question): `expand` replaces it. Private-use characters: no real text has them.
_ASKED_BY_PROMPTING = "\ue000question of the command line\ue000"
_LETTERS = string.ascii_uppercase


def format_options(options: Any) -> str:
    """`["cat", "dog"]` or `"['cat', 'dog']"` as `A. cat\\nB. dog`. Raises ValueError for anything else."""
    if isinstance(options, Undefined):
        str(options)  # a missing column: StrictUndefined raises, naming it
    if isinstance(options, str):
        try:
            options = ast.literal_eval(options.strip())
        except (ValueError, SyntaxError) as exc:
            raise ValueError(f"options {options[:80]!r} are not a list") from exc
    if not isinstance(options, list | tuple) or not options:
        raise ValueError("options must be a non-empty list")
    if len(options) > len(_LETTERS):
        raise ValueError(f"{len(options)} options, more than the {len(_LETTERS)} letters")
    return "\n".join(f"{_LETTERS[i]}. {option}" for i, option in enumerate(options))


class PromptTemplate:
    """A Jinja2 template of the user text, rendered in the sandbox with strict undefined variables."""

    def __init__(self, text: str, *, name: str = "<template>") -> None:
        environment = BoundedEnvironment()
        environment.filters["options"] = format_options
        self._environment = environment
        self.name = name
        self.text = text
        try:
            self._template = environment.from_string(text)
        except TemplateError as exc:
            raise SourceError(f"{name}: not a valid template: {exc}") from exc

    @classmethod
    def from_file(cls, path: Path) -> PromptTemplate:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise SourceError(f"{path}: cannot read the prompt template ({exc})") from exc
        return cls(text, name=str(path))

    def render(self, context: Mapping[str, Any]) -> str:
        """The rendered text, stripped. Raises ValueError naming what went wrong (a missing column, a
        filter refusing its input, a sandbox violation, an empty result)."""
        try:
            text = self._environment.render(self._template, context).strip()
        except (TemplateError, ValueError, TypeError, ArithmeticError, LookupError) as exc:
            raise ValueError(f"prompt template: {exc}") from exc
        if not text:
            raise ValueError("prompt template: rendered an empty prompt")
        return text


@dataclass(frozen=True)
class Prompting:
    """What is asked of every row that brings no question of its own: the questions (one job each) and an
    optional template rendering each job's text. `Prompting()` asks nothing: each row brings its own."""

    questions: tuple[str, ...] = ()
    template: PromptTemplate | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "questions", tuple(self.questions))

    @classmethod
    def of(cls, question: str | None, *, template: PromptTemplate | None = None) -> Prompting:
        """One question asked of every row (None or empty: none)."""
        return cls(questions=(question,) if question else (), template=template)

    @property
    def asks_source(self) -> bool:
        """Whether `expand` must make the jobs (several questions, a template), not the source itself."""
        return self.template is not None or len(self.questions) > 1

    @property
    def default_question(self) -> str | None:
        """The question a source gives a row that brings none: the one question asked, a marker `expand`
        replaces (several questions, a template), or None (nothing asked)."""
        if self.asks_source:
            return _ASKED_BY_PROMPTING
        return self.questions[0] if self.questions else None

    @property
    def asks_anything(self) -> bool:
        return bool(self.questions) or self.template is not None

    def identity(self) -> str:
        """The text that tells this prompting from another (a run's default name hashes it)."""
        return "\n".join(self.questions) + (f"\n{self.template.text}" if self.template else "")

    def expand(self, spec: JobSpec) -> list[JobSpec]:
        """The jobs of one row. Raises ValueError for a row that cannot be prompted."""
        own = spec.question != _ASKED_BY_PROMPTING
        asked: Sequence[str | None] = [spec.question] if own else (self.questions or [None])
        jobs = []
        for question in asked:
            text = question
            if self.template is not None:
                text = self.template.render(_context(spec, question))
            if text is None:
                raise ValueError("no question (no `question` column value and no --question)")
            if has_placeholders(text):
                try:
                    user_layout(text, len(spec.images))
                except PlaceholderMismatch as exc:
                    raise ValueError(f"image placeholders: {exc}") from exc
            jobs.append(spec if text == spec.question else spec.model_copy(update={"question": text}))
        return jobs


def _context(spec: JobSpec, question: str | None) -> dict[str, Any]:
    context: dict[str, Any] = dict(spec.meta or {})
    context.update(images=list(spec.images), image=spec.images[0] if spec.images else None)
    if question is not None:
        context["question"] = question
    return context


class PromptedSource:
    """A source whose specs pass through `Prompting` (one row may become several jobs)."""

    def __init__(self, inner: Source, prompting: Prompting, *, describe_empty: Callable[[], str] | None = None) -> None:
        self._inner = inner
        self._prompting = prompting
        self._describe_empty = describe_empty
        self.unplaced = 0  # rows whose text places fewer images than they have

    def empty_message(self) -> str:
        """What the source was looked for in, and what it holds, when it yields no job."""
        return self._describe_empty() if self._describe_empty else f"{self.uri}: no rows, nothing to submit"

    @property
    def inner(self) -> Source:
        """The source whose rows this one prompts."""
        return self._inner

    def notes(self) -> list[str]:
        """What the wrapped source reports besides its jobs (WebDataset samples without an image)."""
        notes = getattr(self._inner, "notes", None)
        return list(notes()) if callable(notes) else []

    @property
    def uri(self) -> str:
        return self._inner.uri

    def validate(self, check: SpecCheck | None = None, rejects: Rejects | None = None) -> None:
        collected = rejects or Rejects(self.uri, STRICT)
        if isinstance(self._inner, ManifestSource):  # it reads every row to validate: one pass does both
            self._inner.validate(self._expanded_check(check), collected)
        else:
            if not isinstance(self._inner, RowSource):  # a row source's checks are its rows, read below
                self._inner.validate()  # the source's own checks (a listing that escapes its folder, …)
            for where, spec in checked_rows(self, check):
                if isinstance(spec, ValueError):
                    collected.add(where, spec)
                else:
                    collected.accept()
        if rejects is None:
            collected.settle()

    def _expanded_check(self, check: SpecCheck | None) -> SpecCheck:
        def expanded(spec: JobSpec) -> None:
            for job in self._prompting.expand(spec):
                if check is not None:
                    check(job)

        return expanded

    def rows(self) -> Iterator[Row]:
        self.unplaced = 0  # counted again by each pass over the rows
        for where, spec in self._inner.rows():
            if isinstance(spec, ValueError):
                yield where, spec
                continue
            try:
                jobs = self._prompting.expand(spec)
            except ValueError as exc:
                yield where, exc
                continue
            if any(unplaced_images(job.question, len(job.images)) for job in jobs if has_placeholders(job.question)):
                self.unplaced += 1
            for job in jobs:
                yield where, job

    def specs(self) -> Iterator[JobSpec]:
        for where, spec in self.rows():
            if isinstance(spec, ValueError):  # validate() runs first; this only guards a source changed meanwhile
                raise SourceError(f"{self.uri}: {where}: {spec}")
            yield spec


def read_questions(path: Path) -> tuple[str, ...]:
    """One question per non-blank line."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise SourceError(f"{path}: cannot read the questions ({exc})") from exc
    questions = tuple(line.strip() for line in lines if line.strip())
    if not questions:
        raise SourceError(f"{path}: no questions in the file")
    return questions
