"""Symbolic equivalence of two final answers through Hugging Face `math-verify`: fractions and decimals,
roots, intervals, sets, percentages, `x = 5` against `5`.

We extract the final answer ourselves (the last box, the answer statement) and hand math-verify only
that short text, never the trace. How its cost is bounded:

- math-verify's own timeouts are off: they use `signal.alarm`, which only works on the main thread, and
  the worker grades on other threads.
- Input caps: each side at most MAX_SYMBOLIC_CHARS characters; a longer one is not compared here.
- Bounded time: each comparison runs in a child process (pebble's process pool, spawn context) that is
  killed and replaced after SYMBOLIC_TIMEOUT_S. A process, not a thread, because nothing can stop a
  thread: sympy needs only a dozen characters (`10^{10^{10}}`) to start a computation in C that runs for
  hours and that no signal interrupts. A comparison that times out or fails counts as "not shown equal",
  so the caller's own comparison decides.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import importlib.metadata
import logging
import multiprocessing
import threading
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:  # imported when the first comparison needs a pool: every command imports the graders
    import pebble

# Final answers are short; past this length a "final answer" is prose, and parsing it costs real time.
MAX_SYMBOLIC_CHARS: Final = 400
# A symbolic comparison of two short answers takes milliseconds; one that takes longer is runaway sympy.
SYMBOLIC_TIMEOUT_S: Final = 3.0
# Comparisons in flight at once (worker threads grading concurrently share the pool).
POOL_PROCESSES: Final = 2
# How long a caller waits in all: its turn in the pool, a child's first start (importing sympy), the
# comparison. It bounds the wait even when no child can start (a script that spawns without a
# `__main__` guard), where the per-comparison timeout would never begin.
WAIT_LIMIT_S: Final = 60.0
# Address space of a child: sympy can also grow a number past any memory in those seconds.
CHILD_MEMORY_BYTES: Final = 4 << 30
MATH_VERIFY_VERSION: Final = importlib.metadata.version("math-verify")

_log = logging.getLogger(__name__)
_pool_lock = threading.Lock()
_pool: pebble.ProcessPool | None = None


def symbolically_equal(answer: str, reference: str) -> bool:
    """Whether math-verify shows the final answer `answer` equal to `reference` (LaTeX or plain math; text
    with `$` delimiters is read as math-verify reads prose, its last formula counting).

    False when either side is empty or too long, when math-verify cannot parse one, and when the
    comparison did not finish within SYMBOLIC_TIMEOUT_S."""
    answer, reference = answer.strip(), reference.strip()
    if not answer or not reference or max(len(answer), len(reference)) > MAX_SYMBOLIC_CHARS:
        return False
    future = None
    try:
        future = _process_pool().schedule(_compare, args=(answer, reference), timeout=SYMBOLIC_TIMEOUT_S)
        return bool(future.result(timeout=WAIT_LIMIT_S))
    except concurrent.futures.TimeoutError:
        if future is not None:
            future.cancel()  # type: ignore[no-untyped-call]
        _log.warning("symbolic comparison gave up (%d-character answer)", len(answer))
        return False
    except Exception:  # no child could start, the child died, or math-verify raised: not shown equal
        _log.warning("symbolic comparison failed", exc_info=True)
        return False


def _compare(answer: str, reference: str) -> bool:
    """Runs in the child process."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    targets = (LatexExtractionConfig(), ExprExtractionConfig())
    gold = parse(_as_math(reference), extraction_config=targets, parsing_timeout=None)
    predicted = parse(_as_math(answer), extraction_config=targets, parsing_timeout=None)
    return bool(gold and predicted and verify(gold, predicted, timeout_seconds=None))


def _as_math(text: str) -> str:
    # math-verify finds LaTeX between delimiters; a bare box content or reference gets them.
    return text if "$" in text else f"${text}$"


def _warm_up() -> None:
    """Runs once in each child before it takes work, so that importing sympy (about a second) never counts
    against a comparison's time."""
    import resource

    import math_verify

    resource.setrlimit(resource.RLIMIT_AS, (CHILD_MEMORY_BYTES, CHILD_MEMORY_BYTES))
    # It warns once per process that its timeouts are off: they are, on purpose (module docstring).
    logging.getLogger(math_verify.__name__).setLevel(logging.ERROR)
    _compare("1", "1")


def _process_pool() -> pebble.ProcessPool:
    global _pool
    with _pool_lock:
        if _pool is None:
            # spawn: the worker's process has threads (and maybe an engine); forking it is unsafe.
            import pebble

            context = multiprocessing.get_context("spawn")
            _pool = pebble.ProcessPool(max_workers=POOL_PROCESSES, initializer=_warm_up, context=context)
            atexit.register(_stop_pool)
        return _pool


def _stop_pool() -> None:
    global _pool
    with _pool_lock:
        if _pool is not None:
            _pool.stop()  # type: ignore[no-untyped-call]
            _pool.join(timeout=5)
            _pool = None
