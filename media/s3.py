"""S3 (and any S3-compatible store): the one place a boto3 client is built and its errors are mapped onto
the error taxonomy. `S3Objects` fetches objects and ranges, lists prefixes, streams, uploads and writes
content-addressed objects; boto3 clients are thread-safe, so one is shared per `S3Objects`."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import urlparse

from vlmbatch.schema.contracts.errors import (
    InputNotFound,
    InputTooLarge,
    InputUnreadable,
    StorageDenied,
    StorageTransient,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

# S3 error codes that mean "try again later" (throttling, server-side trouble).
_TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "InternalError",
        "ServiceUnavailable",
        "503",
        "500",
        "502",
        "504",
    }
)
_MISSING_CODES = frozenset({"NoSuchKey", "NoSuchBucket", "404", "NotFound"})
# The store refused our credentials or their rights: a storage problem (fix access, then resubmit), not
# a bad input.
_DENIED_CODES = frozenset(
    {
        "AccessDenied",
        "403",
        "Forbidden",
        "ExpiredToken",
        "ExpiredTokenException",
        "TokenRefreshRequired",
        "InvalidToken",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "AccountProblem",
        "AllAccessDisabled",
        "InvalidSecurity",
    }
)


# A conditional PUT that found the object there (written before: content-addressed objects never change).
_ALREADY_THERE = frozenset({"PreconditionFailed", "412", "ConditionalRequestConflict"})
# Keys a listing page asks for (S3's own maximum).
LIST_PAGE = 1000


def make_s3_client(endpoint_url: str | None, *, max_pool_connections: int = 32) -> S3Client:
    """A boto3 S3 client; credentials come only from boto3's standard chain (env, files, roles)."""
    import boto3
    from botocore.config import Config

    config = Config(
        retries={"mode": "standard", "max_attempts": 3},
        connect_timeout=10,
        read_timeout=60,
        max_pool_connections=max_pool_connections,
    )
    # A session of its own: boto3's default session resolves credentials once per process and is not
    # thread-safe to create; a new store (a restarted worker, a test) then reads the current chain.
    return boto3.session.Session().client("s3", endpoint_url=endpoint_url, config=config)


def split_s3_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/key` → (bucket, key)."""
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"not an s3:// URI: {uri!r}")
    return parsed.netloc, parsed.path.lstrip("/")


class S3Objects:
    def __init__(self, endpoint_url: str | None, *, max_pool_connections: int = 32) -> None:
        self._endpoint_url = endpoint_url
        self._pool = max_pool_connections
        self._client: S3Client | None = None
        self._lock = threading.Lock()

    def _s3(self) -> S3Client:
        with self._lock:
            if self._client is None:
                self._client = make_s3_client(self._endpoint_url, max_pool_connections=self._pool)
            return self._client

    def fetch(self, uri: str, *, max_bytes: int) -> bytes:
        bucket, key = split_s3_uri(uri)
        with store_errors(uri):
            response = self._s3().get_object(Bucket=bucket, Key=key)
            size = response["ContentLength"]
            body = response["Body"]
            if size > max_bytes:
                body.close()
                raise InputTooLarge(f"{uri}: {size} bytes, over the {max_bytes}-byte limit")
            data = body.read()
        if len(data) != size:
            raise StorageTransient(f"{uri}: read {len(data)} of {size} bytes")
        return data

    def fetch_range(self, uri: str, *, offset: int, size: int) -> bytes:
        """`size` bytes at `offset` (a member of a tar shard) in one ranged GET."""
        from botocore.exceptions import BotoCoreError, ClientError

        if size == 0:
            return b""
        bucket, key = split_s3_uri(uri)
        try:
            response = self._s3().get_object(Bucket=bucket, Key=key, Range=f"bytes={offset}-{offset + size - 1}")
            data = response["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "InvalidRange":
                raise InputUnreadable(f"{uri}: truncated, no bytes at offset {offset}") from exc
            raise _classify_client_error(uri, exc) from exc
        except BotoCoreError as exc:
            raise StorageTransient(f"{uri}: {type(exc).__name__}") from exc
        if len(data) != size:
            raise InputUnreadable(f"{uri}: truncated, {len(data)} of {size} bytes at offset {offset}")
        return data

    def upload_file(self, path: str, uri: str, *, part_bytes: int = 16 << 20) -> None:
        """Write the local file `path` to the object `uri`, in parts of `part_bytes` (a multipart upload
        once the file is larger than one part; boto3's transfer manager, parts in parallel). Raises
        StorageDenied or StorageTransient."""
        from boto3.s3.transfer import TransferConfig
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        bucket, key = split_s3_uri(uri)
        config = TransferConfig(multipart_threshold=part_bytes, multipart_chunksize=part_bytes)
        try:
            self._s3().upload_file(path, bucket, key, Config=config)
        except ClientError as exc:
            raise _classify_client_error(uri, exc) from exc
        except NoCredentialsError as exc:
            raise StorageDenied(f"{uri}: no S3 credentials found") from exc
        except BotoCoreError as exc:
            raise StorageTransient(f"{uri}: {type(exc).__name__}") from exc
        except Exception as exc:  # the transfer manager wraps part failures (S3UploadFailedError)
            raise StorageTransient(f"{uri}: upload failed: {exc}") from exc

    def open_reader(self, uri: str, *, buffer_size: int = 1 << 20) -> io.BufferedReader:
        """A seekable reader over the object that fetches only the ranges read (Parquet footers, row
        groups). Raises the same errors as `fetch`."""
        bucket, key = split_s3_uri(uri)
        with store_errors(uri):
            size = self._s3().head_object(Bucket=bucket, Key=key)["ContentLength"]
        return io.BufferedReader(_S3RangeFile(self, uri, size), buffer_size=buffer_size)

    def list_keys(self, uri: str, *, page_size: int = LIST_PAGE) -> Iterator[str]:
        """The keys under the prefix `s3://bucket/prefix`, in S3's (lexicographic) order, a page at a time.
        Raises InputNotFound (no such bucket), StorageDenied, StorageTransient or InputUnreadable, when the
        page that fails is asked for."""
        bucket, prefix = split_s3_uri(uri)
        with store_errors(uri):
            paginator = self._s3().get_paginator("list_objects_v2")
            pages = paginator.paginate(Bucket=bucket, Prefix=prefix, PaginationConfig={"PageSize": page_size})
            for page in pages:
                for entry in page.get("Contents", []):
                    yield entry["Key"]

    @contextmanager
    def open_stream(self, uri: str) -> Iterator[IO[bytes]]:
        """The object's bytes as one streamed GET, read front to back (a tar shard scanned once). Raises
        the same errors as `fetch` when the object cannot be opened."""
        bucket, key = split_s3_uri(uri)
        with store_errors(uri):
            body = self._s3().get_object(Bucket=bucket, Key=key)["Body"]
        try:
            yield body  # type: ignore[misc]  # a StreamingBody reads like a binary file
        finally:
            body.close()

    def put_if_absent(self, uri: str, data: bytes) -> None:
        """Write `data` to `uri` unless an object is there already (one conditional PUT; a store that
        ignores the condition rewrites it, which for content-addressed objects changes nothing). Raises
        StorageDenied, StorageTransient or InputUnreadable."""
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        bucket, key = split_s3_uri(uri)
        try:
            self._s3().put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in _ALREADY_THERE:
                raise _classify_client_error(uri, exc) from exc
        except NoCredentialsError as exc:
            raise StorageDenied(f"{uri}: no S3 credentials found") from exc
        except BotoCoreError as exc:
            raise StorageTransient(f"{uri}: {type(exc).__name__}") from exc


class _S3RangeFile(io.RawIOBase):
    """A read-only, seekable file over one S3 object: every read is a ranged GET."""

    def __init__(self, objects: S3Objects, uri: str, size: int) -> None:
        self._objects = objects
        self._uri = uri
        self._size = size
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size}[whence]
        self._position = max(0, base + offset)
        return self._position

    def readinto(self, buffer: Any) -> int:
        wanted = min(len(buffer), self._size - self._position)
        if wanted <= 0:
            return 0
        data = self._objects.fetch_range(self._uri, offset=self._position, size=wanted)
        buffer[: len(data)] = data
        self._position += len(data)
        return len(data)


@contextmanager
def store_errors(uri: str) -> Iterator[None]:
    """botocore's failures as the error taxonomy: a client error by its code, missing credentials as
    StorageDenied, any other (timeouts, connection resets, incomplete reads) as StorageTransient."""
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    try:
        yield
    except ClientError as exc:
        raise _classify_client_error(uri, exc) from exc
    except NoCredentialsError as exc:
        raise StorageDenied(f"{uri}: no S3 credentials found") from exc
    except BotoCoreError as exc:
        raise StorageTransient(f"{uri}: {type(exc).__name__}") from exc


def _classify_client_error(uri: str, exc: Any) -> Exception:
    error = exc.response.get("Error", {})
    code = str(error.get("Code", ""))
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if code in _MISSING_CODES or status == 404:
        return InputNotFound(f"{uri}: no such object")
    if code in _TRANSIENT_CODES or (isinstance(status, int) and status >= 500) or status == 429:
        return StorageTransient(f"{uri}: {code or status}")
    if code in _DENIED_CODES or status == 403:
        return StorageDenied(f"{uri}: {code or status}: the store refused our credentials or their rights")
    return InputUnreadable(f"{uri}: {code or status}")
