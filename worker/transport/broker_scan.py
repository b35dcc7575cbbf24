"""Reading which job ids the broker still holds messages for, so that the reconciler can republish the
queued jobs whose messages were lost (Redis restarted without its data, a publish that never happened).

Supported: Redis (queue lists plus the unacknowledged-message hash) and kombu's SQLAlchemy transport
(visible messages). For other brokers the scan returns None and only expired leases are reconciled.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Iterator
from typing import Any

# kombu's Redis transport: priority queues live in lists named queue + separator + step.
_PRIORITY_SEPARATOR = "\x06\x16"
_PRIORITY_STEPS = (3, 6, 9)
_UNACKED_HASH = "unacked"
_UNACKED_INDEX = "unacked_index"  # delivery tag → delivery time
_PAGE = 5000


def job_ids_in_broker(broker_url: str, queues: Iterable[str], *, unacked_stale_s: float) -> set[int] | None:
    """Job ids carried by messages waiting in `queues`, or delivered but not acknowledged for less than
    `unacked_stale_s` (an older delivery most likely belongs to a worker that died holding it; Redis would
    only redeliver it after the visibility timeout, hours later)."""
    queues = list(queues)
    if broker_url.startswith(("redis://", "rediss://")):
        return set(_ids(_redis_payloads(broker_url, queues, unacked_stale_s)))
    if broker_url.startswith("sqla+"):
        return set(_ids(_sqla_payloads(broker_url.removeprefix("sqla+"), queues)))
    return None


def _redis_payloads(url: str, queues: list[str], unacked_stale_s: float) -> Iterator[str | bytes]:
    import time

    import redis

    client = redis.Redis.from_url(url)
    try:
        for queue in queues:
            for key in [queue, *(f"{queue}{_PRIORITY_SEPARATOR}{step}" for step in _PRIORITY_STEPS)]:
                start = 0
                while page := client.lrange(key, start, start + _PAGE - 1):
                    yield from page
                    start += _PAGE
        fresh = {
            tag.decode() if isinstance(tag, bytes) else str(tag)
            for tag in client.zrangebyscore(_UNACKED_INDEX, time.time() - unacked_stale_s, "+inf")
        }
        for tag, value in client.hscan_iter(_UNACKED_HASH, count=_PAGE):
            if (tag.decode() if isinstance(tag, bytes) else str(tag)) not in fresh:
                continue
            try:
                message, _exchange, routing_key = json.loads(value)
            except (ValueError, TypeError):
                continue
            if routing_key in queues:
                yield json.dumps(message)
    finally:
        client.close()


def _sqla_payloads(url: str, queues: list[str]) -> Iterator[str]:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            tables = set(engine.dialect.get_table_names(connection))
            if "kombu_message" not in tables:
                return
            rows = connection.execute(
                text(
                    "SELECT m.payload FROM kombu_message m JOIN kombu_queue q ON m.queue_id = q.id "
                    f"WHERE m.visible AND q.name IN ({', '.join(f':q{i}' for i in range(len(queues)))})"
                ),
                {f"q{i}": name for i, name in enumerate(queues)},
            )
            for (payload,) in rows:
                yield payload
    finally:
        engine.dispose()


def _ids(payloads: Iterable[str | bytes]) -> Iterator[int]:
    for payload in payloads:
        try:
            yield from _job_ids_of(json.loads(payload))
        except (ValueError, TypeError, KeyError):
            continue  # not one of our messages


def _job_ids_of(message: dict[str, Any]) -> list[int]:
    body = message["body"]
    if message.get("properties", {}).get("body_encoding") == "base64":
        body = base64.b64decode(body)
    args = json.loads(body)[0]
    ids = args[0] if args else []
    return [i for i in ids if isinstance(i, int)]


def touch_unacked(broker_url: str, delivery_tags: Iterable[str]) -> int:
    """Stamp the messages a live worker holds unacknowledged (reserved, waiting for room in its pipeline)
    as delivered now, so that neither the reconciler (`unacked_stale_s`) nor kombu's visibility timeout
    takes them for a dead worker's; return how many were stamped. Only Redis keeps such stamps. An
    acknowledged message is not brought back (ZADD XX only updates members still present)."""
    import time

    tags = list(delivery_tags)
    if not tags or not broker_url.startswith(("redis://", "rediss://")):
        return 0
    import redis

    client = redis.Redis.from_url(broker_url)
    try:
        now = time.time()
        stamped = client.zadd(_UNACKED_INDEX, dict.fromkeys(tags, now), xx=True, ch=True)
        return int(stamped or 0)
    finally:
        client.close()


def queue_depth(broker_url: str, queue: str) -> int | None:
    """Messages waiting in `queue` (not yet delivered), or None for a broker we cannot inspect."""
    if broker_url.startswith(("redis://", "rediss://")):
        import redis

        client = redis.Redis.from_url(broker_url)
        try:
            keys = [queue, *(f"{queue}{_PRIORITY_SEPARATOR}{step}" for step in _PRIORITY_STEPS)]
            return sum(int(client.llen(key)) for key in keys)
        finally:
            client.close()
    if broker_url.startswith("sqla+"):
        from sqlalchemy import create_engine, text

        engine = create_engine(broker_url.removeprefix("sqla+"))
        try:
            with engine.connect() as connection:
                if "kombu_message" not in set(engine.dialect.get_table_names(connection)):
                    return 0
                count = connection.execute(
                    text(
                        "SELECT count(*) FROM kombu_message m JOIN kombu_queue q ON m.queue_id = q.id "
                        "WHERE m.visible AND q.name = :queue"
                    ),
                    {"queue": queue},
                ).scalar()
                return int(count or 0)
        finally:
            engine.dispose()
    return None
