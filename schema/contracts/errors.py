"""The error taxonomy: one exception per stored error string (docs/ARCHITECTURE.md), rooted in `VlmbatchError`.

A job that fails stores `error_type` (the stable string) and the exception's message on its attempt.
Permanent errors never retry; transient ones retry with backoff up to the run's cap.
"""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar


class ErrorType(StrEnum):
    """Stable error strings stored on attempts and jobs. Never rename one: stored rows refer to them."""

    INPUT_NOT_FOUND = "input.not_found"
    INPUT_UNREADABLE = "input.unreadable"
    INPUT_UNSUPPORTED = "input.unsupported"
    INPUT_TOO_LARGE = "input.too_large"
    PROMPT_TOO_LONG = "prompt.too_long"
    ENGINE_OOM = "engine.oom"
    ENGINE_DEAD = "engine.dead"
    STORAGE_TRANSIENT = "storage.transient"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"
    INTERNAL = "internal"
    INPUT_OPTED_OUT = "input.opted_out"
    INPUT_FORBIDDEN = "input.forbidden"
    STORAGE_DENIED = "storage.denied"


# What a bare `vlmbatch resubmit RUN` re-queues (docs/ARCHITECTURE.md, the outcome contract): failures that
# may pass on another attempt. Every other error is permanent for the same input and settings.
RETRYABLE_ERRORS = (
    ErrorType.STORAGE_TRANSIENT,
    ErrorType.TIMEOUT,
    ErrorType.ENGINE_OOM,
    ErrorType.ENGINE_DEAD,
    ErrorType.INTERNAL,
)


class VlmbatchError(Exception):
    """Something went wrong in vlmbatch."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class ConfigurationError(VlmbatchError):
    """The settings are invalid or incomplete."""


class SourceError(VlmbatchError):
    """The job source (S3 prefix, folder or manifest) cannot be read or holds malformed rows."""


class RunNotFound(VlmbatchError):
    """No run has that id or name."""


class RunConflict(VlmbatchError):
    """A run of that name exists with different settings."""


class BrokerUnavailable(VlmbatchError):
    """The jobs are in the ledger but the broker could not be reached to announce them."""


class JobError(VlmbatchError):
    """A job failed; its `error_type` is stored with the attempt."""

    error_type: ClassVar[ErrorType] = ErrorType.INTERNAL
    # Permanent errors fail the job at once; transient ones are retried with backoff.
    transient: ClassVar[bool] = False
    # Retries of a transient error, when fewer than the run's `max_transient_retries`.
    retry_limit: ClassVar[int | None] = None


class InputNotFound(JobError):
    """The input object does not exist."""

    error_type = ErrorType.INPUT_NOT_FOUND


class InputUnreadable(JobError):
    """The input is corrupt or truncated and cannot be decoded."""

    error_type = ErrorType.INPUT_UNREADABLE


class InputUnsupported(JobError):
    """The input's format or mode is not supported."""

    error_type = ErrorType.INPUT_UNSUPPORTED


class InputTooLarge(JobError):
    """The input exceeds the byte or pixel bound (a decompression bomb, or simply too big)."""

    error_type = ErrorType.INPUT_TOO_LARGE


class PromptTooLong(JobError):
    """The prompt (text plus image tokens) does not fit the model's context."""

    error_type = ErrorType.PROMPT_TOO_LONG


class EngineOutOfMemory(JobError):
    """The engine ran out of accelerator memory."""

    error_type = ErrorType.ENGINE_OOM
    transient = True


class EngineDead(JobError):
    """The engine died; the worker hands its jobs back and exits for restart."""

    error_type = ErrorType.ENGINE_DEAD
    transient = True


class StorageTransient(JobError):
    """The object store failed in a way that may pass (throttling, timeout, 5xx)."""

    error_type = ErrorType.STORAGE_TRANSIENT
    transient = True


class StorageDenied(JobError):
    """The object store refused our credentials (access denied, expired or unknown keys): a storage
    problem, not an input one. Retried a few times (a token being refreshed), then failed; resubmit the
    jobs once access is fixed."""

    error_type = ErrorType.STORAGE_DENIED
    transient = True
    retry_limit = 3


class JobTimeout(JobError):
    """The job ran past its time limit."""

    error_type = ErrorType.TIMEOUT


class JobCancelled(JobError):
    """The job was cancelled."""

    error_type = ErrorType.CANCELLED


class InternalError(JobError):
    """An unexpected error inside vlmbatch."""

    error_type = ErrorType.INTERNAL


class InputOptedOut(JobError):
    """The image's server opts it out of AI use (`X-Robots-Tag: noai` or `noimageai`)."""

    error_type = ErrorType.INPUT_OPTED_OUT


class InputForbidden(JobError):
    """The image URL leads to a private, loopback or link-local address, refused by default."""

    error_type = ErrorType.INPUT_FORBIDDEN


def is_storage_problem(error_type: str | None) -> bool:
    """Whether a stored error type is the store's fault (access, availability), not the input's."""
    return error_type is not None and error_type.startswith("storage.")


ERROR_CLASSES: dict[ErrorType, type[JobError]] = {
    cls.error_type: cls
    for cls in (
        InputNotFound,
        InputUnreadable,
        InputUnsupported,
        InputTooLarge,
        PromptTooLong,
        EngineOutOfMemory,
        EngineDead,
        StorageTransient,
        StorageDenied,
        JobTimeout,
        JobCancelled,
        InternalError,
        InputOptedOut,
        InputForbidden,
    )
}
