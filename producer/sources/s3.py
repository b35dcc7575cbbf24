"""An `s3://bucket/prefix` listing, streamed page by page through the object stores (media/s3.py), which
reach any S3-compatible store; credentials come from boto3's standard chain only."""

from __future__ import annotations

from collections.abc import Iterator

from vlmbatch.media.stores import ObjectStores, split_s3_uri
from vlmbatch.producer.sources.base import Rejects, Row, SpecCheck, store_refusal
from vlmbatch.producer.sources.images import looks_like_image
from vlmbatch.schema.contracts.errors import JobError
from vlmbatch.schema.contracts.models import JobSpec

PAGE_SIZE = 1000


class S3PrefixSource:
    def __init__(self, uri: str, *, question: str, stores: ObjectStores) -> None:
        self._uri = uri
        self._bucket, self._prefix = split_s3_uri(uri)
        self._question = question
        self._s3 = stores.s3

    @property
    def uri(self) -> str:
        return self._uri

    def validate(self, check: SpecCheck | None = None, rejects: Rejects | None = None) -> None:
        """`check` is unused: listed images carry no reference or metadata to check. With `rejects`, the
        listing is read up to its first image, to tell an empty prefix (its rows are never malformed)."""
        try:
            next(self._s3.list_keys(self._uri, page_size=1), None)
        except JobError as exc:
            raise store_refusal(self._uri, "list", exc) from exc
        if rejects is not None and next(self.keys(), None) is not None:
            rejects.accept()

    def rows(self) -> Iterator[Row]:
        for spec in self.specs():
            yield spec.images[0], spec

    def specs(self) -> Iterator[JobSpec]:
        for key in self.keys():
            yield JobSpec(images=(f"s3://{self._bucket}/{key}",), question=self._question)

    def keys(self) -> Iterator[str]:
        try:
            for key in self._s3.list_keys(self._uri, page_size=PAGE_SIZE):
                if looks_like_image(key):
                    yield key
        except JobError as exc:
            raise store_refusal(self._uri, "list", exc) from exc
