"""The shared job queue in Redis: one stream per model that every replica reads in one consumer group.

A submission appends the job's id to the stream `queue` (with its record, in the admission script); a replica
with a free accelerator reads the next entry (XREADGROUP), which puts it in the group's pending-entry list
under that replica's name: that is its lease. While the job runs the replica renews the lease (XCLAIM of its own
entry resets the entry's idle time, and only while the record says it holds the job). An entry idle for longer
than --job_lease_seconds belongs to a replica that stopped renewing (it died, or hangs): another replica claims
it (XAUTOCLAIM) and runs the job again. A job's end acknowledges and deletes its entry (XACK, XDEL).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from .redis_scripts import DEQUEUE, GROUP, POSITION, RENEW

REDIS_ERRORS = (redis.RedisError, OSError, TimeoutError)  # Redis unreachable, restarting, or too slow
SPEED_FRESH_SECONDS = 120.0  # a replica's speed counts in estimates while it reported it this recently
HANDED_BACK_IDLE_MS = 10**10  # a handed-back entry looks long idle: the next replica that looks claims it


@dataclass(frozen=True)
class Entry:
    """One queue entry a replica holds: the stream entry id and the job it names."""

    entry: str
    job_id: str


class RedisQueue:
    """The shared queue of the jobs of the model whose keys start with `prefix`."""

    def __init__(self, client: aioredis.Redis, prefix: str, reader: aioredis.Redis | None = None) -> None:
        """`client`: the queue's own connections (reads, renewals); `reader`: those of clients' reads, for what a
        client's GET asks (positions, speeds), so no number of polling clients can hold up a lease renewal."""
        self.client = client
        self.reader = reader or client
        self.prefix = prefix
        self.stream = prefix + "queue"
        self._grouped = False
        self._scripts = {
            name: client.register_script(source) for name, source in (("dequeue", DEQUEUE), ("renew", RENEW))
        }
        self._scripts["position"] = self.reader.register_script(POSITION)

    async def ensure_group(self) -> None:
        """Create the stream and its consumer group unless they exist (at start, and after a Redis that lost its
        data came back)."""
        try:
            await self.client.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def next_new(self, consumer: str, block_ms: int) -> Entry | None:
        """The oldest entry no replica has read yet, now held by `consumer`; None after `block_ms` without one."""
        if not self._grouped:
            await self.ensure_group()
            self._grouped = True
        try:
            answer = await self.client.xreadgroup(GROUP, consumer, {self.stream: ">"}, count=1, block=block_ms)
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            await self.ensure_group()
            return None
        for _, entries in answer or ():
            for entry, fields in entries:
                return Entry(as_text(entry), as_text(fields.get(b"job", b"")))
        return None

    async def next_lapsed(self, consumer: str, lease_seconds: float) -> Entry | None:
        """An entry whose holder stopped renewing it for `lease_seconds` (or handed it back), now held by
        `consumer`; None when there is none."""
        try:
            answer = await self.client.xautoclaim(
                self.stream, GROUP, consumer, min_idle_time=int(lease_seconds * 1000), start_id="0-0", count=1
            )
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            await self.ensure_group()
            return None
        claimed = answer[1] if len(answer) > 1 else []
        for entry, fields in claimed:
            if fields:  # a deleted entry comes back without fields (Redis drops it from the pending list)
                return Entry(as_text(entry), as_text(fields.get(b"job", b"")))
        return None

    async def renew(self, held: Entry, consumer: str, replica: str, attempt: int) -> bool:
        """Start the lease's time again; False when the job is no longer this replica's try (a newer one holds
        it, it ended, or it is gone)."""
        arguments = [self.prefix, held.job_id, held.entry, consumer, replica, attempt]
        return bool(await self._scripts["renew"](args=arguments))

    async def hand_back(self, held: Entry, consumer: str) -> None:
        """Give the entry back at once (shutting down): it looks long idle, so the next replica claims it."""
        await self.client.xclaim(
            self.stream, GROUP, consumer, 0, [held.entry], idle=HANDED_BACK_IDLE_MS, justid=True, force=False
        )

    async def remove(self, job_id: str) -> None:
        """Out of the queue for good (it ended, or was cancelled before any replica took it)."""
        await self._scripts["dequeue"](args=[self.prefix, job_id])

    async def drop(self, held: Entry) -> None:
        """Acknowledge and delete this one entry (a duplicate, or one whose job another entry stands for)."""
        await self.client.xack(self.stream, GROUP, held.entry)
        await self.client.xdel(self.stream, held.entry)

    async def requests(self, job_id: str) -> bytes | None:
        """The job's stored requests (jobs/payload.py), or None once gone."""
        return await self.client.get(self.prefix + "request:" + job_id)

    async def position(self, job_id: str) -> int | None:
        """How many entries no replica has taken yet are ahead of the job's (None: not in the queue)."""
        ahead = await self._scripts["position"](args=[self.prefix, job_id])
        return None if ahead < 0 else int(ahead)

    async def waiting(self) -> int:
        """Entries no replica has taken yet, for the metric: the stream's length less the group's pending entries
        (an ended job's entry is deleted; the group's `lag` miscounts once queued entries were deleted)."""
        try:
            groups = await self.client.xinfo_groups(self.stream)
            length = await self.client.xlen(self.stream)
        except ResponseError:
            return 0
        pending = sum(int(group.get("pending", 0)) for group in groups if as_text(group.get("name", b"")) == GROUP)
        return max(0, int(length) - pending)

    async def forget_gone_replicas(self, idle_seconds: float) -> int:
        """Drop consumers that hold no entry and have not read the queue for `idle_seconds` (replicas that died
        or scaled down): the group's consumer list does not grow with every pod ever started. How many."""
        try:
            consumers = await self.client.xinfo_consumers(self.stream, GROUP)
        except ResponseError:
            return 0
        gone = [
            as_text(consumer["name"])
            for consumer in consumers
            if int(consumer.get("pending", 0)) == 0 and int(consumer.get("idle", 0)) > idle_seconds * 1000
        ]
        for name in gone:
            await self.client.xgroup_delconsumer(self.stream, GROUP, name)
        return len(gone)

    async def report_speed(self, replica: str, mean_seconds: float | None) -> None:
        """Tell the others this replica is up, and its recent mean generation time (for queued jobs' estimates)."""
        value = f"{mean_seconds if mean_seconds is not None else -1} {time.time()}"
        await self.client.hset(self.prefix + "replicas", replica, value)

    async def speed(self) -> tuple[int, float | None]:
        """(replicas seen lately, their mean generation time): a queued job's estimate divides by the first."""
        now, means, seen = time.time(), [], 0
        stale = []
        for replica, value in (await self.reader.hgetall(self.prefix + "replicas")).items():
            mean_text, _, at = as_text(value).partition(" ")
            if now - float(at or 0) > SPEED_FRESH_SECONDS:
                stale.append(replica)
                continue
            seen += 1
            if float(mean_text) >= 0:
                means.append(float(mean_text))
        if stale:
            await self.reader.hdel(self.prefix + "replicas", *stale)
        return seen, (sum(means) / len(means) if means else None)


def as_text(data: Any) -> str:
    """A Redis reply (bytes) as text."""
    return data.decode(errors="replace") if isinstance(data, bytes) else str(data)
