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
    if digits == public_id or not _canonical_number(digits):
        raise not_found(kind, public_id)
    return int(digits)


def is_batch_id(name: str) -> bool:
    """Whether `name` has the form of a batch id: the name of that batch's run, which no other run takes."""
    return name.startswith(BATCH_PREFIX) and _canonical_number(name.removeprefix(BATCH_PREFIX))


def _canonical_number(digits: str) -> bool:
    # ASCII digits only (`str.isdigit` takes superscripts and Arabic-Indic digits too), and no leading
    # zero: one id, one spelling.
    return (
        0 < len(digits) <= _MAX_DIGITS and digits.isascii() and digits.isdigit() and (digits == "0" or digits[0] != "0")
    )


def parse_file_id(public_id: str) -> int:
    return parse_id(public_id, FILE_PREFIX, "file")


def parse_batch_id(public_id: str, *, param: str = "id") -> int:
    try:
        return parse_id(public_id, BATCH_PREFIX, "batch")
    except ApiError as exc:
        exc.param = param
        raise
