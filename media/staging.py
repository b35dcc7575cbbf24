"""Content-addressed staging of embedded image bytes (Parquet cells, `data:` URIs).

Submit writes each image once under a root (a folder or an `s3://bucket/prefix`) as
`<root>/sha256/<2 hex>/<64 hex>` and the job references that object like any other file: the SQL
ledger holds only the URI, the worker reads the object with the store it already has, and identical
images (the same figure in many rows, a source submitted twice) are stored once. Objects are
immutable: a name is its content's hash, so writing one again is a no-op and a half-written object
never becomes visible (local files are renamed into place; S3 PUTs are atomic).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING

from vlmbatch.media.stores import ObjectStores, local_path, split_s3_uri
from vlmbatch.schema.contracts.errors import JobError

if TYPE_CHECKING:
    from concurrent.futures import ThreadPoolExecutor

# Digests this process staged recently: a row group often repeats an image (MMMU's shared figures) and
# the second submit pass (validate, then insert) sees every image again. Bounded, so memory stays flat.
_RECENT_DIGESTS = 4096
# Concurrent uploads when staging to S3: one PUT's latency would otherwise bound submit. The stores' S3
# connection pool (VLMBATCH_FETCH_THREADS, 16 by default) serves them.
_UPLOAD_THREADS = 16


class StagingError(Exception):
    """The staging root cannot be written."""


class Stager:
    """Stages bytes under `root` and returns the staged object's URI (`file://…` or `s3://…`)."""

    def __init__(self, root: str, *, stores: ObjectStores, max_bytes: int | None = None) -> None:
        """`stores`: what writes to an `s3://` root. `max_bytes`: the largest image staged
        (VLMBATCH_MAX_IMAGE_BYTES, the worker's own limit), so that an oversize one fails its row at
        submit rather than its job later."""
        self._root = root.rstrip("/")
        self._max_bytes = max_bytes
        self._stores = stores
        self._recent: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None

    @property
    def root(self) -> str:
        return self._root

    def stage_ahead(self, blobs: list[bytes]) -> None:
        """Stage `blobs` at once (S3: on `_UPLOAD_THREADS` threads), so that the `stage` calls that follow
        find them done. Failures are left for `stage` to raise, on the row that holds the blob."""
        if not self._root.startswith("s3://") or len(blobs) < 2:
            return
        from concurrent.futures import ThreadPoolExecutor

        def attempt(data: bytes) -> None:
            with contextlib.suppress(StagingError):
                self.stage(data)

        if self._executor is None:
            self._executor = ThreadPoolExecutor(_UPLOAD_THREADS, thread_name_prefix="vlmbatch-stage")
        list(self._executor.map(attempt, blobs))

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown()
            self._executor = None

    def stage(self, data: bytes) -> str:
        """The URI of the object holding `data`, written if it is not there yet. Raises StagingError (an
        image over `max_bytes` too)."""
        if self._max_bytes is not None and len(data) > self._max_bytes:
            raise StagingError(
                f"an embedded image of {len(data)} bytes is over the limit of {self._max_bytes} "
                "(VLMBATCH_MAX_IMAGE_BYTES)"
            )
        digest = hashlib.sha256(data).hexdigest()
        with self._lock:
            known = self._recent.get(digest)
            if known is not None:
                self._recent.move_to_end(digest)
                return known
        relative = f"sha256/{digest[:2]}/{digest}"
        uri = self._stage_s3(relative, data) if self._root.startswith("s3://") else self._stage_local(relative, data)
        with self._lock:
            self._recent[digest] = uri
            if len(self._recent) > _RECENT_DIGESTS:
                self._recent.popitem(last=False)
        return uri

    def _stage_local(self, relative: str, data: bytes) -> str:
        target = local_path(self._root).resolve() / relative
        if not target.exists():
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                _write_atomically(target, data)
            except OSError as exc:
                raise StagingError(f"cannot stage into {self._root}: {exc.strerror or exc}") from exc
        return target.as_uri()

    def _stage_s3(self, relative: str, data: bytes) -> str:
        bucket, prefix = split_s3_uri(self._root + "/")
        uri = f"s3://{bucket}/{prefix}{relative}"
        try:
            # One request: a conditional PUT writes the object only if it is absent.
            self._stores.s3.put_if_absent(uri, data)
        except JobError as exc:
            raise StagingError(f"cannot stage into {self._root}: {type(exc).__name__}: {exc}") from exc
        return uri


def _write_atomically(target: Path, data: bytes) -> None:
    """Write to a temporary file beside `target`, then rename: readers never see a partial object."""
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=".staging-")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
