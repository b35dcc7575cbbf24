"""The object store seam: fetch an input's bytes by URI (`s3://bucket/key`, `file:///path`, a plain path,
an `http(s)://` URL, or a member of a tar shard, `tar+<shard URI>#offset=…&size=…`), mapping every
failure onto the error taxonomy. boto3 clients are thread-safe; one is shared."""

from __future__ import annotations

import io
import os
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, TYPE_CHECKING, Any, Protocol
from urllib.parse import urlparse

from vlmbatch.media.local_roots import local_path as local_path  # re-exported: sources import it from here
from vlmbatch.schema.contracts.errors import (
    InputNotFound,
    InputTooLarge,
    InputUnreadable,
    InputUnsupported,
    StorageDenied,
    StorageTransient,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

    from vlmbatch.media.http import HttpImages, HttpOptions
    from vlmbatch.schema.contracts.settings import Settings

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


class ObjectStore(Protocol):
    def fetch(self, uri: str, *, max_bytes: int) -> bytes:
        """The object's bytes. Raises InputNotFound, InputTooLarge, InputUnreadable, InputUnsupported,
        StorageDenied, StorageTransient."""
        ...


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


class LocalFiles:
    def fetch(self, uri: str, *, max_bytes: int) -> bytes:
        with _open_regular(uri) as (handle, info):
            if info.st_size > max_bytes:
                raise InputTooLarge(f"{uri}: {info.st_size} bytes, over the {max_bytes}-byte limit")
            data = handle.read(max_bytes + 1)  # bounded even if the file grew since the fstat
        if len(data) > max_bytes:
            raise InputTooLarge(f"{uri}: over the {max_bytes}-byte limit")
        return data

    def fetch_range(self, uri: str, *, offset: int, size: int) -> bytes:
        """`size` bytes at `offset` (a member of a tar shard): one seek, one read."""
        with _open_regular(uri) as (handle, _info):
            handle.seek(offset)
            data = handle.read(size)
        if len(data) != size:
            raise InputUnreadable(f"{uri}: truncated, {len(data)} of {size} bytes at offset {offset}")
        return data


@contextmanager
def _open_regular(uri: str) -> Iterator[tuple[IO[bytes], os.stat_result]]:
    """The file at `uri`, opened only if it is a regular file (checked before and after the open)."""
    path = local_path(uri)
    try:
        # stat before open: opening a FIFO blocks until a writer comes, and a device never ends.
        _require_regular(uri, os.stat(path))
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise InputNotFound(f"{uri}: no such file") from exc
    except PermissionError as exc:
        raise InputUnreadable(f"{uri}: permission denied") from exc
    with os.fdopen(descriptor, "rb") as handle:
        info = os.fstat(handle.fileno())  # the path may have been replaced since the stat
        _require_regular(uri, info)
        yield handle, info


_FILE_KINDS = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def _require_regular(uri: str, info: os.stat_result) -> None:
    if stat.S_ISREG(info.st_mode):
        return
    if stat.S_ISDIR(info.st_mode):
        raise InputNotFound(f"{uri}: is a directory")
    kind = next((name for test, name in _FILE_KINDS if test(info.st_mode)), "a special file")
    raise InputUnsupported(f"{uri}: {kind}, not a regular file")


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
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        bucket, key = split_s3_uri(uri)
        try:
            response = self._s3().get_object(Bucket=bucket, Key=key)
            size = response["ContentLength"]
            body = response["Body"]
            if size > max_bytes:
                body.close()
                raise InputTooLarge(f"{uri}: {size} bytes, over the {max_bytes}-byte limit")
            data = body.read()
        except ClientError as exc:
            raise _classify_client_error(uri, exc) from exc
        except NoCredentialsError as exc:
            raise StorageDenied(f"{uri}: no S3 credentials found") from exc
        except BotoCoreError as exc:  # timeouts, connection resets, incomplete reads
            raise StorageTransient(f"{uri}: {type(exc).__name__}") from exc
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
        from botocore.exceptions import BotoCoreError, ClientError

        bucket, key = split_s3_uri(uri)
        try:
            size = self._s3().head_object(Bucket=bucket, Key=key)["ContentLength"]
        except ClientError as exc:
            raise _classify_client_error(uri, exc) from exc
        except BotoCoreError as exc:
            raise StorageTransient(f"{uri}: {type(exc).__name__}") from exc
        return io.BufferedReader(_S3RangeFile(self, uri, size), buffer_size=buffer_size)


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


class ObjectStores:
    """Routes each URI to the store of its scheme."""

    def __init__(
        self, *, s3_endpoint_url: str | None, max_pool_connections: int = 32, http: HttpOptions | None = None
    ) -> None:
        self._local = LocalFiles()
        self._s3 = S3Objects(s3_endpoint_url, max_pool_connections=max_pool_connections)
        self._http_options = http
        self._http: HttpImages | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> ObjectStores:
        """The stores `settings` configure (S3 endpoint, fetch threads, the http(s) guards)."""
        from vlmbatch.media.http import HttpOptions

        return cls(
            s3_endpoint_url=settings.s3_endpoint_url,
            max_pool_connections=settings.fetch_threads,
            http=HttpOptions.from_settings(settings),
        )

    @property
    def s3(self) -> S3Objects:
        return self._s3

    def fetch(self, uri: str, *, max_bytes: int) -> bytes:
        from vlmbatch.media.shards import is_member_uri

        if is_member_uri(uri):
            return self._fetch_member(uri, max_bytes=max_bytes)
        scheme = urlparse(uri).scheme
        if scheme == "s3":
            return self._s3.fetch(uri, max_bytes=max_bytes)
        if scheme in ("", "file"):
            return self._local.fetch(uri, max_bytes=max_bytes)
        if scheme in ("http", "https"):
            return self._web().fetch(uri, max_bytes=max_bytes)
        raise InputUnsupported(f"{uri}: unsupported URI scheme {scheme!r} (use s3://, file:// or http(s)://)")

    def _fetch_member(self, uri: str, *, max_bytes: int) -> bytes:
        from vlmbatch.media.shards import parse_member_uri

        try:
            member = parse_member_uri(uri)
        except ValueError as exc:
            raise InputUnsupported(str(exc)) from exc
        if member.size > max_bytes:
            raise InputTooLarge(f"{uri}: {member.size} bytes, over the {max_bytes}-byte limit")
        scheme = urlparse(member.shard).scheme
        if scheme == "s3":
            return self._s3.fetch_range(member.shard, offset=member.offset, size=member.size)
        if scheme in ("", "file"):
            return self._local.fetch_range(member.shard, offset=member.offset, size=member.size)
        raise InputUnsupported(f"{uri}: shards must be s3:// or local files")

    def _web(self) -> HttpImages:
        from vlmbatch.media.http import HttpImages, HttpOptions

        with self._lock:
            if self._http is None:
                self._http = HttpImages(self._http_options or HttpOptions())
            return self._http
