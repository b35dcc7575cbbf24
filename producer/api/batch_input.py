"""What `POST /v1/batches` checks of its request and of the input file: metadata pairs within OpenAI's
limits, and the file's lines that are no request as OpenAI's `errors.data` (the batch then fails, nothing
queued)."""

from __future__ import annotations

from typing import Any

from vlmbatch.producer.api.errors import ApiError
from vlmbatch.producer.sources.openai_batch import NotARequest, OpenAIBatchSource
from vlmbatch.schema.contracts.errors import SourceError

# Bad lines listed in `errors.data` at most (the first ones): a million bad lines make a short answer.
MAX_LISTED_ERRORS = 1000
MAX_METADATA_PAIRS = 16


def line_errors(source: OpenAIBatchSource) -> list[dict[str, Any]]:
    """OpenAI's `errors.data` entries for the file's lines that refuse it whole (the first
    MAX_LISTED_ERRORS): lines that are no request at all, or repeat a `custom_id`. Any other bad line is
    recorded by the submit as a reject and answered in the batch's error file."""
    errors: list[dict[str, Any]] = []
    lines = 0
    try:
        for where, spec in source.rows():
            lines += 1
            refusing = isinstance(spec, NotARequest) or bool(getattr(spec, "refuses_source", False))
            if refusing and len(errors) < MAX_LISTED_ERRORS:
                number = where.rsplit(" ", 1)[-1]
                line = int(number) if number.isdigit() else None
                errors.append({"code": "invalid_request", "message": str(spec), "param": None, "line": line})
    except SourceError as exc:
        return [{"code": "invalid_file", "message": str(exc), "param": None, "line": None}]
    if not lines:
        return [{"code": "empty_file", "message": "the input file has no requests", "param": None, "line": None}]
    return errors


def metadata_pairs(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if (
        not isinstance(value, dict)
        or len(value) > MAX_METADATA_PAIRS
        or not all(_metadata_pair(k, v) for k, v in value.items())
    ):
        raise ApiError(400, "metadata: at most 16 string pairs (keys 64, values 512 characters)", param="metadata")
    return value


def _metadata_pair(key: Any, value: Any) -> bool:
    return isinstance(key, str) and isinstance(value, str) and len(key) <= 64 and len(value) <= 512
