"""The object store seam: fetch an input's bytes by URI (`s3://bucket/key`, `file:///path`, a plain path,
an `http(s)://` URL, or a member of a tar shard, `tar+<shard URI>#offset=…&size=…`), mapping every
failure onto the error taxonomy; and, for the producer's sources, open a file to read (by ranges on S3)
and list an S3 prefix. Every S3 call goes through `S3Objects` (media/s3.py); `ObjectStores` is the one
value a command builds from its settings and hands to whatever reads."""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, TYPE_CHECKING, Protocol
from urllib.parse import urlparse

from vlmbatch.media.local_roots import local_path as local_path  # re-exported: sources import it from here
from vlmbatch.media.s3 import S3Objects as S3Objects  # re-exported: the seam's S3 half
from vlmbatch.media.s3 import make_s3_client as make_s3_client
from vlmbatch.media.s3 import split_s3_uri as split_s3_uri
from vlmbatch.schema.contracts.errors import InputNotFound, InputTooLarge, InputUnreadable, InputUnsupported

if TYPE_CHECKING:
    from vlmbatch.media.http import HttpImages, HttpOptions
    from vlmbatch.schema.contracts.settings import Settings


class ObjectStore(Protocol):
    def fetch(self, uri: str, *, max_bytes: int) -> bytes:
        """The object's bytes. Raises InputNotFound, InputTooLarge, InputUnreadable, InputUnsupported,
        StorageDenied, StorageTransient."""
        ...


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

    def open_reader(self, uri: str) -> IO[bytes]:
        """The regular file at `uri`, open for reading (the caller closes it)."""
        handle, _info = _opened_regular(uri)
        return handle


@contextmanager
def _open_regular(uri: str) -> Iterator[tuple[IO[bytes], os.stat_result]]:
    """The file at `uri`, opened only if it is a regular file (checked before and after the open)."""
    handle, info = _opened_regular(uri)
    with handle:
        yield handle, info


def _opened_regular(uri: str) -> tuple[IO[bytes], os.stat_result]:
    path = local_path(uri)
    try:
        # stat before open: opening a FIFO blocks until a writer comes, and a device never ends.
        _require_regular(uri, os.stat(path))
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise InputNotFound(f"{uri}: no such file") from exc
    except PermissionError as exc:
        raise InputUnreadable(f"{uri}: permission denied") from exc
    handle = os.fdopen(descriptor, "rb")
    try:
        info = os.fstat(handle.fileno())  # the path may have been replaced since the stat
        _require_regular(uri, info)
    except BaseException:
        handle.close()
        raise
    return handle, info


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


class ObjectStores:
    """Routes each URI to the store of its scheme."""

    def __init__(
        self, *, s3_endpoint_url: str | None = None, max_pool_connections: int = 32, http: HttpOptions | None = None
    ) -> None:
        """`s3_endpoint_url`: an S3-compatible store's endpoint (None: AWS's, as boto3 resolves it)."""
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

    def open_reader(self, uri: str, *, buffer_size: int = 1 << 20) -> IO[bytes]:
        """A seekable reader over one file, local (a regular file) or on S3 (read by ranges of
        `buffer_size`, never downloaded whole). Raises InputNotFound, InputUnsupported, InputUnreadable,
        StorageDenied, StorageTransient; reads from S3 may raise them too."""
        scheme = urlparse(uri).scheme
        if scheme == "s3":
            return self._s3.open_reader(uri, buffer_size=buffer_size)
        if scheme in ("", "file"):
            return self._local.open_reader(uri)
        raise InputUnsupported(f"{uri}: unsupported URI scheme {scheme!r} (use s3:// or a local path)")

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
