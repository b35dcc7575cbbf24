"""How a command's flags become typed values: an option group is a frozen dataclass whose fields are its
flags, built once from click's parameters and passed to the command as one argument. The parameter types
and checks that flags share live here too."""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import click

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

F = TypeVar("F", bound=Callable[..., Any])
G = TypeVar("G", bound="DataclassInstance")
Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]
# The runs.name column's width.
MAX_RUN_NAME_CHARS = 200


def option_group(argument: str, group: type[Any], options: Sequence[Decorator]) -> Callable[[F], F]:
    """A decorator that adds `options` to a command and hands it their values as one `group` (a dataclass
    whose fields are the options' names) in the keyword argument `argument`. Raises TypeError at once
    when the options' names and the fields differ."""
    names = tuple(field.name for field in dataclasses.fields(group))

    def decorate(command: F) -> F:
        @functools.wraps(command)
        def with_group(*args: Any, **kwargs: Any) -> Any:
            values = group_of(group, kwargs)
            for name in names:
                del kwargs[name]
            kwargs[argument] = values  # after the fields: EngineOptions has a field named like its argument
            return command(*args, **kwargs)

        with_group.__click_params__ = []  # type: ignore[attr-defined]  # this group's own, checked below
        decorated: Callable[..., Any] = with_group
        for option in reversed(options):
            decorated = option(decorated)
        given = [param.name for param in decorated.__click_params__]  # type: ignore[attr-defined]
        if sorted(n for n in given if n) != sorted(names):
            raise TypeError(f"{group.__name__}: the options {given} are not its fields {list(names)}")
        # The parameters of the decorators applied before this one: click lists them in reverse.
        decorated.__click_params__[:0] = getattr(command, "__click_params__", [])  # type: ignore[attr-defined]
        return cast(F, decorated)

    return decorate


def group_of(group: type[G], params: Mapping[str, Any]) -> G:
    """The `group` (an option group's dataclass) of a command's parsed parameters `params`."""
    return group(**{field.name: params[field.name] for field in dataclasses.fields(group)})


class FiniteFloat(click.FloatRange):
    """A float range that refuses NaN and infinity (which compare false against every bound)."""

    name = "finite float"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


def non_blank(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None and not value.strip():
        raise click.BadParameter("is empty", ctx, param)
    return value


def run_name(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Refuse names that would be ambiguous (all digits: a run id), too long to store, or unprintable."""
    if value is None:
        return None
    if not value.strip():
        raise click.BadParameter("is empty", ctx, param)
    if value.isdigit():
        raise click.BadParameter("may not be all digits (it would read as a run id)", ctx, param)
    # Imported here: the Batch API's package brings Starlette, which no other command needs.
    from vlmbatch.producer.api.ids import is_batch_id

    if is_batch_id(value):
        raise click.BadParameter("batch_<number> names the runs of the Batch API's batches", ctx, param)
    if len(value) > MAX_RUN_NAME_CHARS:
        raise click.BadParameter(f"is {len(value)} characters long, over {MAX_RUN_NAME_CHARS}", ctx, param)
    if any(not ch.isprintable() for ch in value):
        raise click.BadParameter("may not hold control characters", ctx, param)
    return value


def read_text(path: Path) -> str:
    """A flag's file, stripped. Raises click.UsageError (one line) when unreadable, empty or holding NUL."""
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
