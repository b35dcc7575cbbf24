"""vLLM's logs into a file, so the terminal shows vlmbatch's own lines and its progress.

vLLM's engine core and its tensor-parallel ranks are spawned processes: the parent's loggers do not reach
them. Two things do, and both are set before the engine starts: vLLM's own logging setting
(`VLLM_LOGGING_CONFIG_PATH`, a `dictConfig` file every vLLM process applies at import), and the standard
error the children inherit (tracebacks, torch's warnings and a dying rank's last words are printed there,
not logged). With `verbose`, vLLM's warnings and errors reach the terminal as well, and the children
keep the terminal as their standard error.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from pathlib import Path

_FORMAT = "%(asctime)s %(levelname)s %(processName)s pid=%(process)d %(name)s: %(message)s"


def vllm_logging_config(log_file: Path, *, verbose: bool) -> dict[str, object]:
    """A `dictConfig` for the `vllm` logger: INFO and above into `log_file`; WARNING and above on standard
    error too when `verbose`."""
    handlers: dict[str, object] = {
        "file": {"class": "logging.FileHandler", "filename": str(log_file), "formatter": "plain", "level": "INFO"}
    }
    if verbose:
        handlers["terminal"] = {
            "class": "logging.StreamHandler",
            "stream": "ext://sys.stderr",
            "formatter": "plain",
            "level": "WARNING",
        }
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"plain": {"format": _FORMAT}},
        "handlers": handlers,
        "loggers": {"vllm": {"handlers": list(handlers), "level": "INFO", "propagate": False}},
    }


def route_vllm_logs(environ: MutableMapping[str, str], log_file: Path, *, verbose: bool) -> None:
    """Write the logging config beside `log_file` and point vLLM at it, in `environ` (inherited by the
    engine's processes). Call before vLLM is imported. A config the user chose is kept."""
    if environ.get("VLLM_LOGGING_CONFIG_PATH") or environ.get("VLLM_CONFIGURE_LOGGING") == "0":
        return
    log_file.parent.mkdir(parents=True, exist_ok=True)
    config = log_file.with_name(log_file.name + ".logging.json")
    config.write_text(json.dumps(vllm_logging_config(log_file, verbose=verbose), indent=1), encoding="utf-8")
    environ["VLLM_CONFIGURE_LOGGING"] = "1"
    environ["VLLM_LOGGING_CONFIG_PATH"] = str(config)


@contextmanager
def stderr_into(log_file: Path | None) -> Iterator[None]:
    """Standard error (file descriptor 2) appends to `log_file` inside, so that the processes started
    meanwhile keep it as theirs; this process's own is restored on exit. Does nothing for None."""
    if log_file is None:
        yield
        return
    log_file.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    saved = os.dup(2)
    target = os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.dup2(target, 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(target)


def log_tail(log_file: Path | None, *, max_bytes: int = 256 * 1024) -> str:
    """The last `max_bytes` of `log_file` ("" if there is none): where vLLM's children said why they died."""
    if log_file is None:
        return ""
    try:
        with log_file.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - max_bytes))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""
