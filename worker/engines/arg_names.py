"""The names of vLLM's engine arguments, read from the installed vLLM's source without importing it.

`import vllm` takes 5-11 s (torch, triton probes, platform detection); a misspelt `--engine-arg` must be
refused before that, in well under a second. vLLM declares its engine arguments as the annotated fields of
the `EngineArgs` dataclass (and `AsyncEngineArgs`, its subclass) in `vllm/engine/arg_utils.py`, so the
names are read from that file with `ast`. A test checks the result against `dataclasses.fields()`.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
from functools import cache
from pathlib import Path

_CLASSES = ("EngineArgs", "AsyncEngineArgs")


def _arg_utils_path() -> Path | None:
    spec = importlib.util.find_spec("vllm")  # finds the package folder; imports nothing
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "engine" / "arg_utils.py"
    return path if path.is_file() else None


@cache
def engine_arg_names() -> frozenset[str] | None:
    """The field names of vLLM's (Async)EngineArgs; None when vLLM is not installed or its source does not
    declare them the way this reads (then the caller falls back to importing vLLM)."""
    path = _arg_utils_path()
    if path is None:
        return None
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name in _CLASSES:
            for statement in node.body:
                if (
                    isinstance(statement, ast.AnnAssign)
                    and isinstance(statement.target, ast.Name)
                    and "ClassVar" not in ast.unparse(statement.annotation)
                ):
                    names.add(statement.target.id)
    return frozenset(names) or None


def did_you_mean(name: str, known: frozenset[str] | set[str]) -> str | None:
    """The known name closest to `name`, when one is close enough to be a likely typo."""
    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
    return close[0] if close else None
