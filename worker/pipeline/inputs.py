"""Turning a claimed job into an engine request: images fetched and decoded (on I/O threads, timed, and
shared by the jobs in flight that name the same image), the run's sampling under the job's own settings
and overrides, the user turn laid out, and the run's limits checked."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from PIL.Image import Image

from vlmbatch.media.images import decode_image
from vlmbatch.media.stores import ObjectStore
from vlmbatch.schema.contracts.errors import InputUnsupported
from vlmbatch.schema.contracts.models import RunSettings
from vlmbatch.schema.contracts.placement import PlaceholderMismatch, has_placeholders, user_layout
from vlmbatch.schema.contracts.settings import Settings
from vlmbatch.schema.ledger.claims import ClaimedJob
from vlmbatch.worker.engines.base import GenerationRequest, TraceProgress
from vlmbatch.worker.pipeline.answers import JobPlan
from vlmbatch.worker.pipeline.resume import continuation, restart_reason
from vlmbatch.worker.telemetry.metrics import WorkerMetrics


@dataclass(frozen=True)
class LoadedImage:
    image: Image
    fetch_s: float
    decode_s: float
    # SHA-256 of the bytes read (hex): recorded with the attempt, checked by the training exports.
    sha256: str = ""


class ImageLoader:
    """Fetches and decodes one input; called from I/O threads (Pillow releases the GIL while decoding)."""

    def __init__(self, *, settings: Settings, store: ObjectStore, metrics: WorkerMetrics) -> None:
        self._max_bytes = settings.max_image_bytes
        self._max_pixels = settings.max_image_pixels
        self._store = store
        self._metrics = metrics

    def load(self, uri: str) -> LoadedImage:
        """Raises the input errors of the taxonomy (not found, unreadable, unsupported, too large) and
        StorageTransient. The caller has checked `uri` against the run's local roots."""
        started = time.perf_counter()
        data = self._store.fetch(uri, max_bytes=self._max_bytes)
        fetched = time.perf_counter()
        self._metrics.fetch_seconds.observe(fetched - started)
        image = decode_image(data, max_bytes=self._max_bytes, max_pixels=self._max_pixels, source=uri)
        decoded = time.perf_counter()
        self._metrics.decode_seconds.observe(decoded - fetched)
        return LoadedImage(image, fetched - started, decoded - fetched, hashlib.sha256(data).hexdigest())


# Loaded images kept after their last job ends: the jobs of one image can straddle two claims (the first
# claim took what fitted), and claims go in id order, so the straddling image is among the last held.
RECENT_IMAGES = 2


@dataclass
class _Shared:
    holders: int = 0
    loading: asyncio.Future[LoadedImage] | None = None
    # When a job last took hold of it (a counter): the images kept are the last ones held.
    held_at: int = 0


class SharedImages:
    """Jobs in flight that name the same image share one fetch and decode (several questions about one
    image): the image is loaded once while any job holding it is in flight, and of the images no longer
    held, the RECENT_IMAGES last taken hold of stay for jobs claimed just after. The requests of one
    claim's jobs of an image then reach the engine one after the other, as their shared load completes,
    so vLLM's prefix cache reuses the image's prefix. Memory stays bounded: the jobs in flight, whose
    engine requests hold their images anyway, plus RECENT_IMAGES. Used on the pipeline's event loop only."""

    def __init__(self, load: Callable[[str], Awaitable[LoadedImage]], *, keep: int = RECENT_IMAGES) -> None:
        self._load = load
        self._keep = keep
        self._held: dict[str, _Shared] = {}
        self._recent: dict[str, _Shared] = {}
        self._holds = 0

    def __len__(self) -> int:
        return len(self._held) + len(self._recent)

    def hold(self, uris: Iterable[str]) -> None:
        """A job about to load `uris` (each once per call); `release` them when its attempt ends."""
        for uri in uris:
            shared = self._held.get(uri) or self._recent.pop(uri, None) or _Shared()
            shared.holders += 1
            self._holds += 1
            shared.held_at = self._holds
            self._held[uri] = shared

    def release(self, uris: Iterable[str]) -> None:
        for uri in uris:
            shared = self._held.get(uri)
            if shared is None:
                continue
            shared.holders -= 1
            if shared.holders > 0:
                continue
            del self._held[uri]
            loading = shared.loading
            if loading is None:
                continue
            if not loading.done():
                loading.cancel()
            elif not loading.cancelled() and loading.exception() is None and self._keep:
                self._recent[uri] = shared
                if len(self._recent) > self._keep:
                    oldest = min(self._recent, key=lambda u: self._recent[u].held_at)
                    del self._recent[oldest]

    async def load(self, uri: str) -> LoadedImage:
        """The image, loaded by the first holder to ask; raises what loading raises, to every holder."""
        shared = self._held.get(uri)
        if shared is None:  # not held: nothing to share it with
            return await self._load(uri)
        if shared.loading is None:
            shared.loading = asyncio.ensure_future(self._load(uri))
        # Shielded: one holder's cancellation leaves the load to the others.
        return await asyncio.shield(shared.loading)


def build_request(
    *,
    request_id: str,
    job: ClaimedJob,
    settings: RunSettings,
    images: list[Image],
    worker_max_tiles: int,
    plan: JobPlan | None = None,
    progress: TraceProgress | None = None,
) -> GenerationRequest:
    """The engine request for one attempt: the run's settings under the job's own (`params`), under the
    attempt's overrides (a resubmit's max_tokens); continuing the job's checkpoint where its sampling
    allows (worker/pipeline/resume.py), and keeping its output so far in `progress` where a later attempt
    could continue it. Raises InputUnsupported for more images than the run allows, or a question whose
    image placeholders do not match its images."""
    plan = plan or JobPlan.of(job, settings)
    params = plan.params
    sampling = params.sampling(settings.sampling) if params is not None else settings.sampling
    if job.overrides and "max_tokens" in job.overrides:
        sampling = sampling.model_copy(update={"max_tokens": int(job.overrides["max_tokens"])})
    if len(images) > settings.max_images_per_prompt:
        raise InputUnsupported(
            f"{len(images)} images in one job, over the run's limit of {settings.max_images_per_prompt}"
        )
    try:
        layout = user_layout(job.question, len(images)) if has_placeholders(job.question) else None
    except PlaceholderMismatch as exc:
        raise InputUnsupported(str(exc)) from exc
    seed = params.seed if params is not None else None
    resumable = restart_reason(sampling, seed=seed, constraint=plan.constraint) is None
    return GenerationRequest(
        request_id=request_id,
        images=images,
        question=job.question,
        sampling=sampling,
        max_tiles=min(settings.max_tiles, worker_max_tiles),
        constraint=plan.constraint,
        system=params.system if params is not None and params.system else settings.system_prompt,
        layout=layout,
        seed=seed,
        continuation=continuation(job.checkpoint, sampling, seed=seed, constraint=plan.constraint),
        progress=progress if resumable else None,
    )
