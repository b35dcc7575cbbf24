"""Public ids of files and batches: OpenAI's prefixes on the ledger's row ids (`file-7`, `batch_7`)."""

from __future__ import annotations

from vlmbatch.producer.api.errors import ApiError, not_found

FILE_PREFIX = "file-"
BATCH_PREFIX = "batch_"
_MAX_DIGITS = 18


def file_id(row_id: int) -> str:
    return f"{FILE_PREFIX}{row_id}"


def batch_id(row_id: int) -> str:
    return f"{BATCH_PREFIX}{row_id}"


def parse_id(public_id: str, prefix: str, kind: str) -> int:
    """The row id of `public_id`; ApiError 404 for anything that is not one of ours."""
    digits = public_id.removeprefix(prefix)
    if digits == public_id or not digits.isdigit() or len(digits) > _MAX_DIGITS:
        raise not_found(kind, public_id)
    return int(digits)


def parse_file_id(public_id: str) -> int:
    return parse_id(public_id, FILE_PREFIX, "file")


def parse_batch_id(public_id: str, *, param: str = "id") -> int:
    try:
        return parse_id(public_id, BATCH_PREFIX, "batch")
    except ApiError as exc:
        exc.param = param
        raise
