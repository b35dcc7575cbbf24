"""The sandbox prompt templates render in: Jinja2's, bounded. A template runs once per row of a source
that may hold millions, so a render is cut (a row error, ValueError) once its output passes MAX_OUTPUT
characters, once it has run MAX_SECONDS, once its `range` loops have taken MAX_ITERATIONS steps, or when
one `*` would build a string or list over MAX_OUTPUT (or `**` a huge number). An attribute the sandbox
hides (`__class__`) is an error too, never a silent `Undefined` in the stored prompt."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from typing import Any

from jinja2 import StrictUndefined, Template
from jinja2.exceptions import SecurityError
from jinja2.sandbox import SandboxedEnvironment

MAX_OUTPUT = 1_000_000
MAX_SECONDS = 5.0
MAX_ITERATIONS = 1_000_000
# 10 ** 10 ** 10 would compute an integer of 10^10 digits before anything could stop it.
MAX_EXPONENT = 4096


class BoundedEnvironment(SandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**"})

    def __init__(self) -> None:
        super().__init__(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=False)
        self._steps = 0
        self._deadline = float("inf")
        self.globals["range"] = self._range

    def render(self, template: Template, context: Mapping[str, Any]) -> str:
        """`template` rendered with `context`, within the bounds. Raises SecurityError past one, and
        whatever the template raises."""
        self._steps, self._deadline = 0, time.monotonic() + MAX_SECONDS
        pieces: list[str] = []
        size = 0
        for piece in template.generate(dict(context)):
            size += len(piece)
            if size > MAX_OUTPUT:
                raise SecurityError(f"the rendered prompt passed {MAX_OUTPUT:,} characters")
            self._check_time()
            pieces.append(piece)
        return "".join(pieces)

    def unsafe_undefined(self, obj: Any, attribute: str) -> Any:
        raise SecurityError(f"access to attribute {attribute!r} of a {type(obj).__name__} is not allowed")

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            sequence, times = (left, right) if isinstance(right, int) else (right, left)
            if (
                isinstance(sequence, str | list | tuple)
                and isinstance(times, int)
                and len(sequence) * times > MAX_OUTPUT
            ):
                raise SecurityError(f"`*` would build {len(sequence) * times:,} items, over {MAX_OUTPUT:,}")
        if operator == "**" and isinstance(right, int) and abs(right) > MAX_EXPONENT:
            raise SecurityError(f"`**` with an exponent over {MAX_EXPONENT:,}")
        return super().call_binop(context, operator, left, right)

    def _range(self, *args: int) -> Iterator[int]:
        for value in range(*args):
            self._steps += 1
            if self._steps > MAX_ITERATIONS:
                raise SecurityError(f"the template's loops passed {MAX_ITERATIONS:,} steps")
            if self._steps % 1024 == 0:
                self._check_time()
            yield value

    def _check_time(self) -> None:
        if time.monotonic() > self._deadline:
            raise SecurityError(f"the template took over {MAX_SECONDS:g} s to render")
