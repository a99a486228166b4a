"""The Redis job store: job records, results, changes and cancels shared by every replica of a model.

Keys live under `kserve-diffusion:{model}:` so several models can share one Redis:
- `job:{id}` the record (JSON), `result:{id}` its predictions, `content:{id}` a video's file, each with a TTL
  (finished: --job_ttl_seconds; unfinished: --request_timeout more); `request:{id}` a queued job's requests;
- `queue` the shared queue (a stream; `entries` maps a job to its entry), `replicas` each replica's recent
  speed (redis_queue.py);
- `jobs` (every kept job), `owner:{owner}` (one caller's), `index:{owner}:{api}` (what a caller lists),
  sorted by creation time; `done:empty` / `done:kept` (finished without / with a result, by finish time);
  `meta` (id -> owner, api, result bytes) and `bytes` (the results' total), so the bounds (--max_jobs,
  --max_jobs_per_owner, --max_job_result_bytes) hold across replicas. Admission and eviction run as Lua
  scripts, so two replicas cannot both take the last place.
Each change is published on `events:{id}`, a cancel on `cancel`. A replica listens to both on ONE pub/sub
connection and fans the messages out to its event streams in process, and keeps a small pool of its own for
job writes: no number of open event streams or readers can starve a running job's progress and end.
It is one module because every part of it shares the key layout and the connections above.
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
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import OutOfMemoryError, WatchError

from ..errors import ConfigError, JobStoreUnavailable
from ..redact import loggable, without_job_ids, without_password
from .records import JobRecord
from .redis_queue import RedisQueue, as_text
from .redis_scripts import ANONYMOUS, CREATE, FORGET, ROOM
from .store import (
    CHUNK_BYTES,
    Change,
    JobStore,
    Page,
    StoredResult,
    Stream,
    Watchers,
    store_full,
    too_many_for_owner,
)

logger = logging.getLogger("kserve.diffusion")
CONNECT_TIMEOUT = 5.0
COMMAND_TIMEOUT = 5.0
WATCH_RETRIES = 50  # optimistic-lock retries of one update; only a cancel and a step can race
RECONNECT_SECONDS = 1.0
RECONNECT_RETRIES = 3  # a command on a connection Redis closed is retried this often on a new one
READ_CONNECTIONS = 64  # clients' reads wait for one of these (up to COMMAND_TIMEOUT) rather than fail
WRITE_CONNECTIONS = 8  # reserved for job writes: progress, ends, submissions, cancels
QUEUE_CONNECTIONS = 4  # the shared queue: a blocking read, lease renewals, hand-backs, ends
UNAVAILABLE = "the job store is unavailable right now; retry later (synchronous :predict still works)"
FULL = "the job store is full (Redis has no memory left); retry later (synchronous :predict still works)"


class RedisJobStore(JobStore):
    """Jobs in Redis at `url`, for `model`, within the bounds given."""

    def __init__(
        self,
        url: str,
        model: str,
        ttl: float,
        unfinished_ttl: float,
        max_jobs: int = 1000,
        max_result_bytes: int = 1_000_000_000,
        max_per_owner: int | None = None,
    ) -> None:
        self.url = url
        self.name = without_password(url)
        self.ttl = math.ceil(ttl)
        self.unfinished_ttl = math.ceil(unfinished_ttl + ttl)
        self.max_jobs = max_jobs
        self.max_result_bytes = max_result_bytes
        self.max_per_owner = max_per_owner or max_jobs
        self.prefix = f"kserve-diffusion:{model}:"
        self.redis: aioredis.Redis | None = None  # clients' reads
        self.writer: aioredis.Redis | None = None  # job writes, on connections of their own
        self.watchers = Watchers()
        self._cancels: asyncio.Queue[str] = asyncio.Queue()
        self._listener: asyncio.Task[None] | None = None
        self._scripts: dict[str, Any] = {}

    def check(self) -> None:
        """At startup, before serving: an unreachable Redis is a startup error; an eviction policy that may
        drop running jobs' records is a warning."""
        client = redis.Redis.from_url(self.url, socket_connect_timeout=CONNECT_TIMEOUT, socket_timeout=CONNECT_TIMEOUT)
        try:
            client.ping()
            with contextlib.suppress(redis.RedisError):  # CONFIG is often disabled on managed Redis
                policy = client.config_get("maxmemory-policy").get("maxmemory-policy")
                if policy and policy != "noeviction":
                    logger.warning(
                        "job store %s: maxmemory-policy is %s, which can evict a running job's record (the job then "
                        "stops as 'store lost'); run Redis with maxmemory-policy noeviction (docs/jobs.md)",
                        self.name,
                        policy,
                    )
        except (redis.RedisError, OSError) as exc:
            raise ConfigError(f"--job_store: cannot reach {self.name}: {_reason(exc)}") from None
        finally:
            client.close()

    def _pool(self, connections: int) -> aioredis.Redis:
        # A pooled connection that Redis closed (it restarted) is reconnected and the command sent again, rather
        # than each stale connection failing one request after a restart.
        pool = aioredis.BlockingConnectionPool.from_url(
            self.url,
            max_connections=connections,
            timeout=COMMAND_TIMEOUT,
            socket_connect_timeout=CONNECT_TIMEOUT,
            socket_timeout=COMMAND_TIMEOUT,
            # Not on a timeout: a Redis that stops answering fails a command after COMMAND_TIMEOUT, not 4 times that.
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), RECONNECT_RETRIES, (redis.ConnectionError,)),
        )
        return aioredis.Redis(connection_pool=pool)

    async def start(self) -> None:
        """Open the pools on the server's event loop and start the one pub/sub listener."""
        self.redis = self._pool(READ_CONNECTIONS)
        self.writer = self._pool(WRITE_CONNECTIONS)
        for name, source in (("create", CREATE), ("room", ROOM), ("forget", FORGET)):
            self._scripts[name] = self.writer.register_script(source)
        # The queue's blocking reads wait on connections of their own: they never hold up a job write.
        # Its group is made by the first read; what clients' GETs ask of it goes through their pool.
        self.queue = RedisQueue(self._pool(QUEUE_CONNECTIONS), self.prefix, reader=self.redis)
        self._listener = asyncio.create_task(self._listen())

    async def close(self) -> None:
        """Stop listening; close the pools."""
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(BaseException):
                await self._listener
        for client in (self.redis, self.writer, self.queue.client if self.queue else None):
            if client is not None:
                await client.aclose()

    def _key(self, kind: str, job_id: str = "") -> str:
        return f"{self.prefix}{kind}{':' + job_id if job_id else ''}"

    @property
    def _reader(self) -> aioredis.Redis:
        assert self.redis is not None, "start() first"
        return self.redis

    @property
    def _writer(self) -> aioredis.Redis:
        assert self.writer is not None, "start() first"
        return self.writer

    @contextlib.contextmanager
    def _reachable(self) -> Iterator[None]:
        """Redis errors as a 503 that says what still works; where Redis is and what failed go to the log only."""
        try:
            yield
        except OutOfMemoryError as exc:
            logger.warning("job store %s is full: %s", self.name, _reason(exc))
            raise JobStoreUnavailable(FULL, retry_after=30) from None
        except (redis.RedisError, OSError, TimeoutError) as exc:
            logger.warning("job store %s: %s", self.name, _reason(exc))
            raise JobStoreUnavailable(UNAVAILABLE) from None

    def _times(self) -> list[Any]:
        return [time.time(), self.ttl, self.unfinished_ttl]

    async def create(self, record: JobRecord, requests: bytes | None = None) -> None:
        """Admit and SET the record atomically (a Lua script), forgetting finished jobs to make room; with
        `requests`, keep them and append the job to the shared queue in the same script."""
        owner = record.owner or ANONYMOUS
        now, ttl, unfinished_ttl = self._times()
        arguments = [self.prefix, record.id, record.to_json(), record.created_at, now, owner, record.api]
        arguments += [self.max_jobs, self.max_per_owner, unfinished_ttl, ttl, requests or b""]
        with self._reachable():
            answer = await self._scripts["create"](args=arguments)
        if answer == b"owner":
            raise too_many_for_owner(self.max_per_owner)
        if answer == b"full":
            raise store_full(self.max_jobs)

    async def get(self, job_id: str) -> JobRecord | None:
        """GET the record."""
        with self._reachable():
            raw = await self._reader.get(self._key("job", job_id))
        return JobRecord.from_json(raw) if raw is not None else None

    async def room_for(self, size: int) -> bool:
        """Forget the oldest finished results (a Lua script) until `size` more bytes fit under the bound."""
        now, ttl, unfinished_ttl = self._times()
        with self._reachable():
            return bool(
                await self._scripts["room"](args=[self.prefix, size, self.max_result_bytes, now, ttl, unfinished_ttl])
            )

    async def update(
        self, job_id: str, change: Change, result: StoredResult | None = None
    ) -> tuple[JobRecord | None, bool]:
        """WATCH the record, apply `change`, write it (and the result, and the bookkeeping of a job that ends) in
        MULTI and publish it; retried when another replica wrote in between."""
        key = self._key("job", job_id)
        with self._reachable():
            async with self._writer.pipeline(transaction=True) as pipe:
                for _ in range(WATCH_RETRIES):
                    try:
                        await pipe.watch(key)
                        raw = await pipe.get(key)
                        current = JobRecord.from_json(raw) if raw is not None else None
                        new = change(current) if current is not None else None
                        if current is None or new is None:
                            await pipe.unwatch()
                            return current, False
                        ttl = self.ttl if new.finished else self.unfinished_ttl
                        data = new.to_json()
                        pipe.multi()
                        pipe.set(key, data, ex=ttl)
                        if new.finished and not current.finished:
                            self._bookkeep_end(pipe, new, result)
                        pipe.publish(self._key("events", job_id), data)
                        await pipe.execute()
                        return new, True
                    except WatchError:
                        continue
        raise JobStoreUnavailable("the job store is too busy to change the job; retry later")

    def _bookkeep_end(self, pipe: Any, record: JobRecord, result: StoredResult | None) -> None:
        """In the MULTI of a job's end: its result, and where the bounds find it."""
        size = result.size if result is not None else 0
        if result is not None:
            pipe.set(self._key("result", record.id), result.predictions, ex=self.ttl)
            if result.content is not None:
                pipe.set(self._key("content", record.id), result.content, ex=self.ttl)
            pipe.incrby(self._key("bytes"), size)
        done = "done:kept" if result is not None else "done:empty"
        pipe.zadd(self._key(done), {record.id: record.finished_at or time.time()})
        pipe.hset(self._key("meta"), record.id, f"{record.owner or ANONYMOUS}\n{record.api}\n{size}")

    async def read(self, job_id: str, part: str = "result") -> Stream | None:
        """STRLEN, then GETRANGE a chunk at a time: a 55 MB video never sits whole in this process per reader."""
        key = self._key(part, job_id)
        with self._reachable():
            size = await self._reader.strlen(key)
        if not size:
            return None

        async def chunks() -> AsyncIterator[bytes]:
            for start in range(0, size, CHUNK_BYTES):
                with self._reachable():
                    chunk = await self._reader.getrange(key, start, min(start + CHUNK_BYTES, size) - 1)
                if not chunk:  # expired meanwhile: the answer ends short, and the client sees a broken download
                    return
                yield chunk

        return Stream(size, chunks())

    async def delete(self, job_id: str) -> None:
        """Forget the record, its result and every index entry (a Lua script)."""
        with self._reachable():
            await self._scripts["forget"](args=[self.prefix, job_id])

    async def recent(self, owner: str, api: str, limit: int, after: str | None = None, ascending: bool = False) -> Page:
        """A page of the owner's index for `api`: only the page's records are read and parsed."""
        key = self._key(f"index:{owner}:{api}")
        with self._reachable():
            start = 0
            if after is not None:
                rank = await (self._reader.zrank if ascending else self._reader.zrevrank)(key, after)
                if rank is None:
                    return Page([], False)
                start = rank + 1
            span = self._reader.zrange if ascending else self._reader.zrevrange
            ids = [i.decode() for i in await span(key, start, start + 2 * limit)]  # room for expired ones
            if not ids:
                return Page([], False)
            raws = await self._reader.mget([self._key("job", i) for i in ids])
            for gone in [i for i, raw in zip(ids, raws, strict=True) if raw is None]:
                await self._scripts["forget"](args=[self.prefix, gone])
        records = [JobRecord.from_json(raw) for raw in raws if raw is not None]
        return Page(records[:limit], len(records) > limit)

    async def _listen(self) -> None:
        """Forever: one pub/sub connection for every job's events and the cancel channel, reconnecting after a
        pause when Redis goes away (event streams re-read their job meanwhile)."""
        events = self._key("events:")
        while True:
            client = aioredis.Redis.from_url(self.url, socket_connect_timeout=CONNECT_TIMEOUT, health_check_interval=30)
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.psubscribe(events + "*")
                await pubsub.subscribe(self._key("cancel"))
                async for message in pubsub.listen():
                    channel = as_text(message.get("channel"))
                    job_id = channel[len(events) :]
                    if message.get("type") == "pmessage" and self.watchers.watched(job_id):
                        self.watchers.tell(job_id, JobRecord.from_json(message["data"]))
                    elif message.get("type") == "message":
                        self._cancels.put_nowait(as_text(message["data"]))
            except (redis.RedisError, OSError) as exc:
                logger.warning("job store %s: event channel lost (%s); reconnecting", self.name, _reason(exc))
                await asyncio.sleep(RECONNECT_SECONDS)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
                    await client.aclose()

    async def announce_cancel(self, job_id: str) -> None:
        """PUBLISH the id on the cancel channel: the replica running the job stops it."""
        with self._reachable():
            await self._writer.publish(self._key("cancel"), job_id)

    async def cancellations(self) -> AsyncIterator[str]:
        """Ids from the cancel channel (read by the one listener)."""
        while True:
            yield await self._cancels.get()


def _reason(exc: BaseException) -> str:
    """The error in a few words for the log: no URL password (redis-py names host and port only), no job id."""
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return loggable(without_job_ids(text), 200)
