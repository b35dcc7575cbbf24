"""What the broker holds of a queue's claim tokens (schema/contracts/tokens.py), so that the reconciler
can publish tokens for the queued jobs that have none (Redis restarted without its data, a publish that
never happened, a worker that died holding tokens).

Supported: Redis (the queue's lists by length, plus the unacknowledged-message hash) and kombu's
SQLAlchemy transport (visible messages, counted). For other brokers the scan returns None and only
expired leases are reconciled.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable
from typing import Any, cast

from vlmbatch.schema.contracts.tokens import token_jobs

# kombu's Redis transport: priority queues live in lists named queue + separator + step.
_PRIORITY_SEPARATOR = "\x06\x16"
_PRIORITY_STEPS = (3, 6, 9)
_UNACKED_HASH = "unacked"
_UNACKED_INDEX = "unacked_index"  # delivery tag → delivery time
_PAGE = 5000


def jobs_covered(broker_url: str, queue: str, *, jobs_per_message: int, unacked_stale_s: float) -> int | None:
    """How many jobs the tokens of `queue` can still claim: those waiting (each counted as
    `jobs_per_message`, by the lists' lengths: no message is read) and those delivered but not
    acknowledged for less than `unacked_stale_s` (by their own count; an older delivery most likely
    belongs to a worker that died holding it, and Redis would redeliver it only hours later)."""
    if broker_url.startswith(("redis://", "rediss://")):
        return _redis_covered(broker_url, queue, jobs_per_message, unacked_stale_s)
    if broker_url.startswith("sqla+"):
        # Delivered messages are invisible there and not counted: at worst a few spare tokens.
        waiting = queue_depth(broker_url, queue)
        return None if waiting is None else waiting * jobs_per_message
    return None


def _redis_covered(url: str, queue: str, jobs_per_message: int, unacked_stale_s: float) -> int:
    import time

    import redis

    client = redis.Redis.from_url(url)
    try:
        keys = [queue, *(f"{queue}{_PRIORITY_SEPARATOR}{step}" for step in _PRIORITY_STEPS)]
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.llen(key)
        covered = sum(int(n) for n in pipe.execute()) * jobs_per_message
        # As many entries as tokens in flight across the fleet (its prefetch), whatever the queue's length.
        fresh = cast(list[bytes], client.zrangebyscore(_UNACKED_INDEX, time.time() - unacked_stale_s, "+inf"))
        for start in range(0, len(fresh), _PAGE):
            for value in client.hmget(_UNACKED_HASH, fresh[start : start + _PAGE]):
                covered += _unacked_jobs(value, queue)
        return covered
    finally:
        client.close()


def _unacked_jobs(value: bytes | str | None, queue: str) -> int:
    """The jobs an unacknowledged message of `queue` asks for (0 for another queue's or a foreign one)."""
    if value is None:
        return 0
    try:
        message, _exchange, routing_key = json.loads(value)
        if routing_key != queue:
            return 0
        return token_jobs(_argument(message)) or 0
    except (ValueError, TypeError, KeyError, IndexError):
        return 0


def _argument(message: dict[str, Any]) -> object:
    body = message["body"]
    if message.get("properties", {}).get("body_encoding") == "base64":
        body = base64.b64decode(body)
    args = json.loads(body)[0]
    return args[0] if args else None


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
