"""Members of tar shards (WebDataset): where a member's bytes lie, and the URI a job stores for it.

Submit reads each shard's headers once and records every image member as
`tar+<shard URI>#offset=<data offset>&size=<bytes>&member=<name>`; the worker then reads exactly those
bytes with a ranged S3 GET or a local seek, never the whole shard per job.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO
from urllib.parse import parse_qs, quote, urlencode

MEMBER_SCHEME_PREFIX = "tar+"


@dataclass(frozen=True)
class TarMember:
    """A regular file inside a shard: its name and the byte range of its data."""

    shard: str
    name: str
    offset: int
    size: int

    def uri(self) -> str:
        fragment = urlencode({"offset": self.offset, "size": self.size, "member": self.name}, quote_via=quote)
        return f"{MEMBER_SCHEME_PREFIX}{self.shard}#{fragment}"


def is_member_uri(uri: str) -> bool:
    return uri.startswith(MEMBER_SCHEME_PREFIX)


def parse_member_uri(uri: str) -> TarMember:
    """The member a `tar+…` URI names. Raises ValueError for a malformed one."""
    if not is_member_uri(uri):
        raise ValueError(f"not a tar member URI: {uri!r}")
    shard, hash_mark, fragment = uri[len(MEMBER_SCHEME_PREFIX) :].rpartition("#")
    fields = parse_qs(fragment, strict_parsing=True) if hash_mark else {}
    try:
        offset, size = int(fields["offset"][0]), int(fields["size"][0])
    except (KeyError, ValueError) as exc:
        raise ValueError(f"a tar member URI without offset and size: {uri!r}") from exc
    if not shard or offset < 0 or size < 0:
        raise ValueError(f"a malformed tar member URI: {uri!r}")
    return TarMember(shard=shard, name=fields.get("member", [""])[0], offset=offset, size=size)


@dataclass(frozen=True)
class ScannedMember:
    """A member met while streaming a shard; `read` gives its bytes, valid only until the next member."""

    member: TarMember
    archive: tarfile.TarFile
    info: tarfile.TarInfo

    def read(self) -> bytes:
        handle = self.archive.extractfile(self.info)
        return handle.read() if handle is not None else b""


def scan_members(shard: str, stream: IO[bytes]) -> Iterator[ScannedMember]:
    """Every regular file of the tar read from `stream`, in order, with its data's offset in the shard.

    Streams (tarfile's `r|` mode): one pass, nothing buffered beyond the current member. Raises
    tarfile.TarError for a stream that is not a tar (or is compressed: members of a compressed shard
    cannot be read by range).
    """
    with tarfile.open(fileobj=stream, mode="r|") as archive:
        for info in archive:
            if info.isreg():
                member = TarMember(shard=shard, name=info.name, offset=info.offset_data, size=info.size)
                yield ScannedMember(member=member, archive=archive, info=info)
