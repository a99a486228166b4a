"""The Redis job store: job records, results, changes and cancels shared by every replica of a model.

Keys live under `kserve-diffusion:{model}:` so several models can share one Redis. A record is JSON
under `job:{id}` and its result under `result:{id}`, both with a TTL (finished: --job_ttl_seconds;
unfinished: --request_timeout more, so a replica that died mid-job leaves nothing behind for long). A
sorted set indexes recent jobs by creation time. Each change is published on `events:{id}` (the SSE
streams of every replica listen there); a cancel is published on `cancel` for the replica running it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.exceptions import WatchError

from ..errors import ConfigError, JobStoreUnavailable
from ..redact import loggable, without_password
from .records import JobRecord
from .store import Change, JobStore

logger = logging.getLogger("kserve.diffusion")
CONNECT_TIMEOUT = 5.0
COMMAND_TIMEOUT = 5.0
WATCH_RETRIES = 50  # optimistic-lock retries of one update; only a cancel and a step can race
RECENT_SCAN = 4  # index entries read per listed job (some have expired)
RECONNECT_SECONDS = 1.0


class RedisJobStore(JobStore):
    """Jobs in Redis at `url`, for `model`."""

    def __init__(self, url: str, model: str, ttl: float, unfinished_ttl: float) -> None:
        self.url = url
        self.name = without_password(url)
        self.ttl = math.ceil(ttl)
        self.unfinished_ttl = math.ceil(unfinished_ttl + ttl)
        self.prefix = f"kserve-diffusion:{model}:"
        self.redis: aioredis.Redis | None = None

    def check(self) -> None:
        """At startup, before serving: an unreachable Redis is a startup error."""
        client = redis.Redis.from_url(self.url, socket_connect_timeout=CONNECT_TIMEOUT, socket_timeout=CONNECT_TIMEOUT)
        try:
            client.ping()
        except (redis.RedisError, OSError) as exc:
            raise ConfigError(f"--job_store: cannot reach {self.name}: {_reason(exc)}") from None
        finally:
            client.close()

    async def start(self) -> None:
        """Open the connection pool on the server's event loop."""
        self.redis = aioredis.Redis.from_url(
            self.url, socket_connect_timeout=CONNECT_TIMEOUT, socket_timeout=COMMAND_TIMEOUT
        )

    async def close(self) -> None:
        """Close the pool."""
        if self.redis is not None:
            await self.redis.aclose()

    def _key(self, kind: str, job_id: str = "") -> str:
        return f"{self.prefix}{kind}{':' + job_id if job_id else ''}"

    @property
    def _client(self) -> aioredis.Redis:
        assert self.redis is not None, "start() first"
        return self.redis

    @contextlib.contextmanager
    def _reachable(self) -> Iterator[None]:
        """Redis errors as a 503 that says what is wrong and what still works."""
        try:
            yield
        except (redis.RedisError, OSError, TimeoutError) as exc:
            logger.warning("job store %s: %s", self.name, _reason(exc))
            raise JobStoreUnavailable(
                f"the job store ({self.name}) is unreachable: {_reason(exc)}; synchronous :predict still works"
            ) from None

    async def create(self, record: JobRecord) -> None:
        """SET the record (it cannot exist yet) and index it."""
        with self._reachable():
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.set(self._key("job", record.id), record.to_json(), ex=self.unfinished_ttl, nx=True)
                pipe.zadd(self._key("jobs"), {record.id: record.created_at})
                pipe.zremrangebyscore(self._key("jobs"), "-inf", time.time() - self.unfinished_ttl)
                await pipe.execute()

    async def get(self, job_id: str) -> JobRecord | None:
        """GET the record."""
        with self._reachable():
            raw = await self._client.get(self._key("job", job_id))
        return JobRecord.from_json(raw) if raw is not None else None

    async def update(self, job_id: str, change: Change, result: bytes | None = None) -> tuple[JobRecord | None, bool]:
        """WATCH the record, apply `change`, write it (and the result) in MULTI and publish it; retried when
        another replica wrote in between."""
        key = self._key("job", job_id)
        with self._reachable():
            async with self._client.pipeline(transaction=True) as pipe:
                for _ in range(WATCH_RETRIES):
                    try:
                        await pipe.watch(key)
                        raw = await pipe.get(key)
                        current = JobRecord.from_json(raw) if raw is not None else None
                        new = change(current) if current is not None else None
                        if new is None:
                            await pipe.unwatch()
                            return current, False
                        ttl = self.ttl if new.finished else self.unfinished_ttl
                        data = new.to_json()
                        pipe.multi()
                        pipe.set(key, data, ex=ttl)
                        if result is not None:
                            pipe.set(self._key("result", job_id), result, ex=ttl)
                        pipe.publish(self._key("events", job_id), data)
                        await pipe.execute()
                        return new, True
                    except WatchError:
                        continue
        raise JobStoreUnavailable(f"the job store ({self.name}) is too busy to change job {job_id[:12]}")

    async def result(self, job_id: str) -> bytes | None:
        """GET the result."""
        with self._reachable():
            return await self._client.get(self._key("result", job_id))

    async def delete(self, job_id: str) -> None:
        """DEL the record and result, and unindex them."""
        with self._reachable():
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.delete(self._key("job", job_id), self._key("result", job_id))
                pipe.zrem(self._key("jobs"), job_id)
                await pipe.execute()

    async def recent(self, limit: int, api: str | None = None) -> list[JobRecord]:
        """The newest indexed jobs that still exist (expired ones leave the index as they are met)."""
        with self._reachable():
            ids = await self._client.zrevrange(self._key("jobs"), 0, limit * RECENT_SCAN - 1)
            if not ids:
                return []
            names = [i.decode() for i in ids]
            raws = await self._client.mget([self._key("job", i) for i in names])
            gone = [i for i, raw in zip(names, raws, strict=True) if raw is None]
            if gone:
                await self._client.zrem(self._key("jobs"), *gone)
        records = [JobRecord.from_json(raw) for raw in raws if raw is not None]
        return [r for r in records if api is None or r.api == api][:limit]

    @contextlib.asynccontextmanager
    async def watch(self, job_id: str) -> AsyncIterator[AsyncIterator[JobRecord]]:
        """SUBSCRIBE to the job's channel (one connection per watcher, closed on exit)."""
        pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        with self._reachable():
            await pubsub.subscribe(self._key("events", job_id))

        async def changes() -> AsyncIterator[JobRecord]:
            with self._reachable():
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        yield JobRecord.from_json(message["data"])

        try:
            yield changes()
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()

    async def announce_cancel(self, job_id: str) -> None:
        """PUBLISH the id on the cancel channel: the replica running the job stops it."""
        with self._reachable():
            await self._client.publish(self._key("cancel"), job_id)

    async def cancellations(self) -> AsyncIterator[str]:
        """Ids from the cancel channel, reconnecting (after a pause) when Redis goes away."""
        while True:
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self._key("cancel"))
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        yield _text(message["data"])
            except (redis.RedisError, OSError) as exc:
                logger.warning("job store %s: cancel channel lost (%s); reconnecting", self.name, _reason(exc))
                await asyncio.sleep(RECONNECT_SECONDS)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()


def _text(data: Any) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else str(data)


def _reason(exc: BaseException) -> str:
    """The error in a few words, never the URL's password (redis-py messages name host and port only)."""
    return loggable(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__, 200)
