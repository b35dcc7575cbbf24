"""What every job source is and shares: the `Source` protocol, rows with their errors, and the
row-by-row base class. Sources import this module; only `sources.open` imports the sources."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol

from vlmbatch.schema.contracts.errors import SourceError
from vlmbatch.schema.contracts.models import JobSpec

MANIFEST_SUFFIXES = (".jsonl", ".csv", ".parquet")


# A check applied to every spec while validating; it raises ValueError for a spec that must be refused.
SpecCheck = Callable[[JobSpec], None]
# Where a row is in its source ("line 12", "row 7", a key) and its spec, or why it is malformed.
Row = tuple[str, JobSpec | ValueError]
# Malformed rows listed in full in the error before the rest are only counted.
MAX_REPORTED_ERRORS = 20


class Source(Protocol):
    """A stream of job specs. `validate` raises SourceError naming every problem it finds."""

    @property
    def uri(self) -> str: ...

    def validate(self, check: SpecCheck | None = None) -> None: ...

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

    def validate(self, check: SpecCheck | None = None) -> None:
        errors = RowErrors(self._uri)
        for where, spec in checked_rows(self, check):
            if isinstance(spec, ValueError):
                errors.add(where, spec)
        errors.raise_if_any()

    def specs(self) -> Iterator[JobSpec]:
        for where, spec in self.rows():
            if isinstance(spec, ValueError):  # validate() runs first; this only guards a file changed meanwhile
                raise SourceError(f"{self._uri}: {where}: {spec}")
            yield spec


def source_notes(source: Source) -> list[str]:
    """What a source reports besides its jobs (WebDataset samples without an image, for one)."""
    notes = getattr(source, "notes", None)
    return list(notes()) if callable(notes) else []
