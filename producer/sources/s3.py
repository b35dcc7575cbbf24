"""An `s3://bucket/prefix` listing, streamed page by page with boto3's paginator. Works with any
S3-compatible store through `endpoint_url`; credentials come from boto3's standard chain only."""

from __future__ import annotations

from collections.abc import Iterator

from vlmbatch.media.stores import make_s3_client, split_s3_uri
from vlmbatch.producer.sources.base import Rejects, Row, SpecCheck
from vlmbatch.producer.sources.images import looks_like_image
from vlmbatch.schema.contracts.errors import SourceError
from vlmbatch.schema.contracts.models import JobSpec

PAGE_SIZE = 1000


class S3PrefixSource:
    def __init__(self, uri: str, *, question: str, s3_endpoint_url: str | None) -> None:
        self._uri = uri
        self._bucket, self._prefix = split_s3_uri(uri)
        self._question = question
        self._client = make_s3_client(s3_endpoint_url)

    @property
    def uri(self) -> str:
        return self._uri

    def validate(self, check: SpecCheck | None = None, rejects: Rejects | None = None) -> None:
        """`check` is unused: listed images carry no reference or metadata to check. With `rejects`, the
        listing is read up to its first image, to tell an empty prefix (its rows are never malformed)."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self._client.list_objects_v2(Bucket=self._bucket, Prefix=self._prefix, MaxKeys=1)
            if rejects is not None and next(self.keys(), None) is not None:
                rejects.accept()
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "error")
            raise SourceError(f"{self._uri}: cannot list ({code})") from exc
        except BotoCoreError as exc:
            raise SourceError(f"{self._uri}: cannot list ({type(exc).__name__})") from exc

    def rows(self) -> Iterator[Row]:
        for spec in self.specs():
            yield spec.images[0], spec

    def specs(self) -> Iterator[JobSpec]:
        for key in self.keys():
            yield JobSpec(images=(f"s3://{self._bucket}/{key}",), question=self._question)

    def keys(self) -> Iterator[str]:
        paginator = self._client.get_paginator("list_objects_v2")
        pages = paginator.paginate(Bucket=self._bucket, Prefix=self._prefix, PaginationConfig={"PageSize": PAGE_SIZE})
        for page in pages:
            for entry in page.get("Contents", []):
                key = entry["Key"]
                if looks_like_image(key):
                    yield key
