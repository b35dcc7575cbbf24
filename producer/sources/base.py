"""What every job source is and shares: the `Source` protocol, rows with their errors, the policy for
rows that cannot become jobs (`RejectPolicy`: recorded as rejects, or `--strict` all-or-nothing) and the
`Rejects` that apply it while the rows are read, and the row-by-row base class. Sources import this
module; only `sources.open` imports the sources."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Protocol

from vlmbatch.schema.contracts.errors import JobError, SourceError
from vlmbatch.schema.contracts.models import JobSpec, RowReject

MANIFEST_SUFFIXES = (".jsonl", ".csv", ".parquet")


# A check applied to every spec while validating; it raises ValueError for a spec that must be refused.
SpecCheck = Callable[[JobSpec], None]
# Where a row is in its source ("line 12", "row 7", a key) and its spec, or why it is malformed.
Row = tuple[str, JobSpec | ValueError]
# Malformed rows listed in full in the error before the rest are only counted.
MAX_REPORTED_ERRORS = 20


class Source(Protocol):
    """A stream of job specs. `validate` raises SourceError naming every problem it finds; given
    `rejects`, it hands malformed rows to them instead (and raises only for the source as a whole)."""

    @property
    def uri(self) -> str: ...

    def validate(self, check: SpecCheck | None = None, rejects: Rejects | None = None) -> None: ...

    def specs(self) -> Iterator[JobSpec]: ...

    def rows(self) -> Iterator[Row]:
        """Every row with its spec or its error, in one pass (for loaders that validate as they go)."""
        ...


class RowErrors:
    """Collects malformed rows; `raise_if_any` refuses the submit, naming them: the first ones with their
    reason, and every one by number (as ranges, so a million bad rows still make a short message)."""

    def __init__(self, uri: str) -> None:
        self._uri = uri
        self.total = 0
        self.shown: list[str] = []
        self._numbers: list[list[int]] = []  # [first, last] runs of bad row numbers

    def add(self, where: str, error: ValueError) -> None:
        self.total += 1
        if len(self.shown) < MAX_REPORTED_ERRORS:
            self.shown.append(f"{where}: {error}")
        number = where.rsplit(" ", 1)[-1]
        if number.isdigit():
            n = int(number)
            if self._numbers and self._numbers[-1][1] in (n, n - 1):
                self._numbers[-1][1] = n
            else:
                self._numbers.append([n, n])

    def raise_if_any(self) -> None:
        if not self.total:
            return
        if self.total == 1:  # one line, for the terminal and for logs
            raise SourceError(f"{self._uri}: 1 malformed row; nothing was submitted: {self.shown[0]}")
        more = ""
        if self.total > len(self.shown):
            numbers = ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in self._numbers)
            more = f"\n  … and {self.total - len(self.shown)} more; all of them: {numbers}"
        raise SourceError(
            f"{self._uri}: {self.total} malformed row(s); nothing was submitted:\n  " + "\n  ".join(self.shown) + more
        )


# The default --max-rejects: 1% of the rows read, and never fewer than this.
MIN_MAX_REJECTS = 100


@dataclass(frozen=True)
class RejectPolicy:
    """What a submit does with rows that cannot become jobs. `strict`: any such row refuses the whole
    submit (nothing written). Otherwise they are recorded as rejects and the rest is submitted, unless
    there are more than `max_rejects` of them (default: 1% of the rows, at least MIN_MAX_REJECTS), which
    says the source itself is wrong (a misnamed column): then nothing is written either."""

    strict: bool = False
    max_rejects: int | None = None

    def limit(self, rows: int) -> int:
        if self.max_rejects is not None:
            return self.max_rejects
        return max(rows // 100, MIN_MAX_REJECTS)


STRICT = RejectPolicy(strict=True)


class Rejects:
    """Counts a source's rows as they are read and keeps its malformed ones: `settle` refuses the submit
    when the policy says so; `pending` are those not yet recorded in the ledger (the caller drains them)."""

    def __init__(self, uri: str, policy: RejectPolicy) -> None:
        self.policy = policy
        self.errors = RowErrors(uri)
        self.rows = 0  # well-formed rows (jobs before prompting) seen
        self.first: list[RowReject] = []
        self.pending: list[RowReject] = []
        self._uri = uri
        # A row error that refuses its source whatever the policy (a duplicate custom_id: recorded as a
        # reject, its id would name both a job and a refused line).
        self._refusing = False

    @property
    def total(self) -> int:
        return self.errors.total

    def accept(self, n: int = 1) -> None:
        self.rows += n

    def add(self, where: str, error: ValueError) -> None:
        self.errors.add(where, error)
        self._refusing = self._refusing or bool(getattr(error, "refuses_source", False))
        reject = reject_of(where, error)
        if len(self.first) < MAX_REPORTED_ERRORS:
            self.first.append(reject)
        if not self.policy.strict:
            self.pending.append(reject)

    def settle(self) -> None:
        """Raise SourceError (nothing is written) when the rejects so far refuse the submit."""
        if self.policy.strict or self._refusing:
            self.errors.raise_if_any()
            return
        limit = self.policy.limit(self.rows + self.total)
        if self.total > limit:
            shown = "\n  ".join(self.errors.shown[:5])
            raise SourceError(
                f"{self._uri}: {self.total} of {self.rows + self.total} rows cannot become jobs, more than "
                f"--max-rejects ({limit}); nothing was submitted (a wrong column or flag?):\n  {shown}"
            )

    def drain(self) -> list[RowReject]:
        pending, self.pending = self.pending, []
        return pending


def checked_rows(source: Source, check: SpecCheck | None) -> Iterator[Row]:
    """`source.rows()` with `check` applied to every well-formed spec."""
    for where, spec in source.rows():
        if check is not None and isinstance(spec, JobSpec):
            try:
                check(spec)
            except ValueError as exc:
                yield where, exc
                continue
        yield where, spec


class RowSource:
    """What every row-by-row source shares: `validate` reports every malformed row at once (nothing is
    written then), and `specs` yields the rows once `validate` has passed. Subclasses give `_uri` and
    `rows()`."""

    _uri: str

    @property
    def uri(self) -> str:
        return self._uri

    def rows(self) -> Iterator[Row]:
        raise NotImplementedError

    def validate(self, check: SpecCheck | None = None, rejects: Rejects | None = None) -> None:
        collected = rejects or Rejects(self._uri, STRICT)
        for where, spec in checked_rows(self, check):
            if isinstance(spec, ValueError):
                collected.add(where, spec)
            else:
                collected.accept()
        if rejects is None:
            collected.settle()

    def specs(self) -> Iterator[JobSpec]:
        for where, spec in self.rows():
            if isinstance(spec, ValueError):  # validate() runs first; this only guards a file changed meanwhile
                raise SourceError(f"{self._uri}: {where}: {spec}")
            yield spec


@contextmanager
def rewound_text(reader: IO[bytes], *, errors: str | None = None, newline: str | None = None) -> Iterator[IO[str]]:
    """The file open in `reader` as UTF-8 text from its start (`errors`, `newline`: TextIOWrapper's). The
    reader stays open whatever is done with the text (a `yield from` over it closes it when its generator
    is dropped): a source reads its one opened file again on its next pass."""
    reader.seek(0)
    with lent_text(reader, errors=errors, newline=newline) as wrapper:
        yield wrapper


@contextmanager
def lent_text(reader: IO[bytes], *, errors: str | None = None, newline: str | None = None) -> Iterator[IO[str]]:
    """`reader` as UTF-8 text from where it stands, leaving it open (see `rewound_text`)."""
    with io.TextIOWrapper(_Lent(reader), encoding="utf-8", errors=errors, newline=newline) as wrapper:
        yield wrapper


class _Lent(io.BufferedIOBase):
    """A reader lent to a text wrapper: closing this leaves the reader open."""

    def __init__(self, reader: IO[bytes]) -> None:
        self._reader = reader

    @property
    def name(self) -> str:
        return str(getattr(self._reader, "name", ""))

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        return self._reader.read(-1 if size is None else size)

    def read1(self, size: int = -1) -> bytes:
        return self.read(size)


def store_refusal(uri: str, doing: str, exc: JobError) -> SourceError:
    """The SourceError for a store that failed while a source read it: `<uri>: cannot <doing> (<why>)`."""
    return SourceError(f"{uri}: cannot {doing} ({exc.message.removeprefix(f'{uri}: ')})")


def reject_of(where: str, error: ValueError) -> RowReject:
    """The reject recorded for a malformed row (an OpenAI batch line's error carries its `custom_id`)."""
    return RowReject(where=where, reason=str(error), custom_id=getattr(error, "custom_id", None))


def source_empty_message(source: Source) -> str:
    """The one line that says a source yields no job: what was looked for, and what was found."""
    describe = getattr(source, "empty_message", None)
    return str(describe()) if callable(describe) else f"{source.uri}: no rows, nothing to submit"


def source_unplaced(source: Source) -> int:
    """Rows whose text places fewer images than they have (the others went before the text)."""
    unplaced = getattr(source, "unplaced", None)
    return int(unplaced) if isinstance(unplaced, int) else 0


def source_notes(source: Source) -> list[str]:
    """What a source reports besides its jobs (WebDataset samples without an image, for one)."""
    notes = getattr(source, "notes", None)
    return list(notes()) if callable(notes) else []
