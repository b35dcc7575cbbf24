"""Turning a claimed job into an engine request: images fetched and decoded (on I/O threads, timed),
the run's sampling with the job's overrides, and the run's limits checked."""

from __future__ import annotations

import time
from dataclasses import dataclass

from PIL.Image import Image

from vlmbatch.media.images import decode_image
from vlmbatch.media.local_roots import LocalRoots
from vlmbatch.media.stores import ObjectStore
from vlmbatch.schema.claims import ClaimedJob
from vlmbatch.schema.errors import InputUnsupported
from vlmbatch.schema.models import RunSettings
from vlmbatch.schema.settings import Settings
from vlmbatch.worker.engines.base import GenerationRequest
from vlmbatch.worker.pipeline.answers import constraint_of
from vlmbatch.worker.process.metrics import WorkerMetrics


@dataclass(frozen=True)
class LoadedImage:
    image: Image
    fetch_s: float
    decode_s: float


class ImageLoader:
    """Fetches and decodes one input; called from I/O threads (Pillow releases the GIL while decoding)."""

    def __init__(self, *, settings: Settings, store: ObjectStore, metrics: WorkerMetrics) -> None:
        self._max_bytes = settings.max_image_bytes
        self._max_pixels = settings.max_image_pixels
        self._store = store
        self._metrics = metrics

    def load(self, uri: str, roots: LocalRoots) -> LoadedImage:
        """Raises the input errors of the taxonomy (not found, unreadable, unsupported, too large; a local
        path outside `roots` is unsupported) and StorageTransient."""
        started = time.perf_counter()
        roots.check(uri)
        data = self._store.fetch(uri, max_bytes=self._max_bytes)
        fetched = time.perf_counter()
        self._metrics.fetch_seconds.observe(fetched - started)
        image = decode_image(data, max_bytes=self._max_bytes, max_pixels=self._max_pixels, source=uri)
        decoded = time.perf_counter()
        self._metrics.decode_seconds.observe(decoded - fetched)
        return LoadedImage(image, fetched - started, decoded - fetched)


def build_request(
    *, request_id: str, job: ClaimedJob, settings: RunSettings, images: list[Image], worker_max_tiles: int
) -> GenerationRequest:
    """The engine request for one attempt. Raises InputUnsupported for more images than the run allows."""
    sampling = settings.sampling
    if job.overrides and "max_tokens" in job.overrides:
        sampling = sampling.model_copy(update={"max_tokens": int(job.overrides["max_tokens"])})
    if len(images) > settings.max_images_per_prompt:
        raise InputUnsupported(
            f"{len(images)} images in one job, over the run's limit of {settings.max_images_per_prompt}"
        )
    return GenerationRequest(
        request_id=request_id,
        images=images,
        question=job.question,
        sampling=sampling,
        max_tiles=min(settings.max_tiles, worker_max_tiles),
        constraint=constraint_of(settings),
    )
