"""Where a source's image reference points: the one place that turns a cell of a manifest or a Parquet
column into the URI a job stores. `s3://`, `http(s)://` and `file://` URIs pass through; relative paths
are resolved against the source's own folder (or S3 prefix) and may not leave it; `data:` URIs are
decoded and staged (media/staging.py), so that no image bytes ever reach the ledger."""

from __future__ import annotations

import binascii
from pathlib import PurePosixPath
from urllib.parse import unquote_to_bytes

from vlmbatch.media.local_roots import LocalRoots
from vlmbatch.media.staging import Stager, StagingError
from vlmbatch.media.stores import local_path, split_s3_uri
from vlmbatch.schema.contracts.errors import InputUnsupported

PASS_THROUGH_SCHEMES = ("s3://", "http://", "https://")


def resolve_image_ref(ref: str, *, base_uri: str, stager: Stager | None, roots: LocalRoots | None = None) -> str:
    """The job URI for `ref`, found in the source at `base_uri`. A local path must also lie under `roots`
    (media/local_roots.py) when given. Raises ValueError (a malformed row)."""
    ref = ref.strip()
    if not ref:
        raise ValueError("an image URI is empty")
    if ref.startswith("data:"):
        return stage_bytes(decode_data_uri(ref), stager)
    if ref.lower().startswith(PASS_THROUGH_SCHEMES):
        return checked_remote(ref)
    if "://" in ref and not ref.startswith("file://"):
        raise ValueError(f"unsupported URI scheme in {ref[:80]!r} (use s3://, http(s)://, file://, data: or a path)")
    if base_uri.startswith("s3://") and not ref.startswith("file://") and not ref.startswith("/"):
        bucket, key = split_s3_uri(base_uri)
        return f"s3://{bucket}/{_normalise_relative(PurePosixPath(key).parent, ref)}"
    path = local_path(ref)
    if path.is_absolute():
        resolved = path.resolve()
    elif base_uri.startswith("s3://"):
        raise ValueError(f"{ref!r}: a local path in a manifest on S3 must be absolute")
    else:
        root = local_path(base_uri).resolve().parent
        resolved = (root / path).resolve()
        # With roots, they decide (the source's folder is one of them); without, the folder alone does.
        if roots is None and resolved != root and root not in resolved.parents:
            raise ValueError(f"{ref!r} leads outside the source's folder")
    if roots is not None and not roots.allows(resolved):
        if not path.is_absolute():
            raise ValueError(f"{ref!r} leads outside the source's folder")
        raise ValueError(f"{ref!r} is {roots.refusal()}")
    return resolved.as_uri()


def checked_remote(uri: str) -> str:
    """`uri` (s3:// or http(s)://) as given, once an http(s) one is known to parse. Raises ValueError."""
    if uri.lower().startswith(("http://", "https://")):
        # Imported here: httpx and tenacity cost ~150 ms at every command's start, and only http(s) rows need them.
        from vlmbatch.media.http import parsed_http_url

        try:
            parsed_http_url(uri)
        except InputUnsupported as exc:
            raise ValueError(exc.message) from None
    return uri


def stage_bytes(data: bytes, stager: Stager | None) -> str:
    """Stage embedded image bytes. Raises ValueError when this source has nowhere to stage them."""
    if stager is None:
        raise ValueError("embedded image bytes need a staging root (--stage-to)")
    if not data:
        raise ValueError("an embedded image is empty")
    try:
        return stager.stage(data)
    except StagingError as exc:
        raise ValueError(str(exc)) from exc


def decode_data_uri(uri: str) -> bytes:
    """The bytes of a `data:[<type>][;base64],<payload>` URI (RFC 2397). Raises ValueError."""
    # One copy of the payload at most: a `data:` image may be 100 MB of text.
    comma = uri.find(",", len("data:"))
    if comma < 0:
        raise ValueError("a data: URI without a comma")
    payload = uri[comma + 1 :]
    if uri[:comma].endswith(";base64"):
        try:  # binascii reads an ASCII str in place (base64.b64decode would encode it to bytes first)
            return binascii.a2b_base64(payload, strict_mode=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError("a data: URI whose base64 payload is invalid") from exc
    return unquote_to_bytes(payload)


def _normalise_relative(base: PurePosixPath, relative: str) -> str:
    parts: list[str] = list(base.parts)
    for part in PurePosixPath(relative).parts:
        if part == "..":
            if not parts:
                raise ValueError(f"{relative!r} leads outside the source's prefix")
            parts.pop()
        elif part != ".":
            parts.append(part)
    return "/".join(parts)
