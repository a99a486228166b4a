"""What a job store does (the in-memory and the Redis store both do it), and the pieces both use.

Every store keeps records and results, changes a record atomically (`update`: the change sees the
current record, so a cancel and a finish cannot both win), tells watchers of each change (the SSE
stream), forgets finished jobs after --job_ttl_seconds, and carries cancel requests to the replica that
runs the job (`announce_cancel` / `cancellations`). Every store holds the same bounds: --max_jobs in all,
--max_jobs_per_owner per caller, --max_job_result_bytes of results; when full it forgets finished jobs
without a result (cancelled, failed) before those with one, oldest first, and never an unfinished one.
Results are read back as chunks (`read`), so a download never copies a whole video per reader.
"""

from __future__ import annotations

import asyncio
import contextlib
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import JobStoreUnavailable, TooManyJobs
from .records import JobRecord

if TYPE_CHECKING:
    from .redis_queue import RedisQueue

Change = Callable[[JobRecord], JobRecord | None]  # the new record, or None to leave it as it is
WATCH_BUFFER = 64  # changes a slow watcher may fall behind by; the oldest progress is dropped first
CHUNK_BYTES = 1 << 20  # a result is read back in pieces of this size
PARTS = ("result", "content")  # the predictions as JSON; the file itself (a video's MP4, for /content)


class Watchers:
    """This process's event streams, by job: each change is offered to every stream that watches its job, through
    a bounded queue per stream. Both stores keep one (the Redis store feeds it from its one pub/sub listener)."""

    def __init__(self) -> None:
        self._queues: dict[str, set[asyncio.Queue[JobRecord]]] = {}

    def watched(self, job_id: str) -> bool:
        """Whether any stream watches `job_id` (a change nobody watches need not even be decoded)."""
        return job_id in self._queues

    def tell(self, job_id: str, record: JobRecord) -> None:
        """Offer the job's new record to every stream watching it."""
        for queue in self._queues.get(job_id, ()):
            offer(queue, record)

    @contextlib.asynccontextmanager
    async def watch(self, job_id: str) -> AsyncIterator[AsyncIterator[JobRecord]]:
        """The job's changes from now on, until the context ends."""
        queue: asyncio.Queue[JobRecord] = asyncio.Queue(WATCH_BUFFER)
        self._queues.setdefault(job_id, set()).add(queue)

        async def changes() -> AsyncIterator[JobRecord]:
            while True:
                yield await queue.get()

        try:
            yield changes()
        finally:
            queues = self._queues.get(job_id, set())
            queues.discard(queue)
            if not queues:
                self._queues.pop(job_id, None)


@dataclass(frozen=True)
class StoredResult:
    """What a succeeded job keeps: its predictions as JSON and, for the Videos API, the file itself."""

    predictions: bytes
    content: bytes | None = None

    @property
    def size(self) -> int:
        """The bytes it takes in the store."""
        return len(self.predictions) + len(self.content or b"")

    def part(self, name: str) -> bytes | None:
        """One part by name (PARTS)."""
        return self.predictions if name == "result" else self.content


@dataclass(frozen=True)
class Stream:
    """A stored part read back: its size, and its bytes in chunks."""

    size: int
    chunks: AsyncIterator[bytes]


@dataclass(frozen=True)
class Page:
    """One page of a caller's jobs, and whether more follow."""

    records: list[JobRecord]
    has_more: bool


def too_many_for_owner(limit: int) -> TooManyJobs:
    """The 429 of a caller whose every kept job is unfinished."""
    return TooManyJobs(
        f"you have {limit} jobs queued or running (--max_jobs_per_owner); wait for one to finish or cancel one"
    )


def store_full(limit: int) -> JobStoreUnavailable:
    """The 503 of a store whose every kept job is unfinished."""
    return JobStoreUnavailable(
        f"the job store is full: {limit} jobs are queued or running (--max_jobs); retry later", retry_after=30
    )


class JobStore(ABC):
    """Job state shared by the replicas that use this store."""

    name = "memory"  # for messages and logs (a Redis store shows its URL without the password)
    max_result_bytes: int | None = None  # the largest result it can keep, when it has such a limit

    async def start(self) -> None:  # noqa: B027 - most stores have nothing to set up
        """Connect (once, on the server's event loop)."""

    async def close(self) -> None:  # noqa: B027
        """Let go of connections."""

    queue: RedisQueue | None = None  # the queue every replica takes jobs from; None: each replica runs its own

    @abstractmethod
    async def create(self, record: JobRecord, requests: bytes | None = None) -> None:
        """Keep a new job, forgetting finished ones to make room; JobStoreUnavailable (full, or unreachable) or
        TooManyJobs (its owner's jobs are all unfinished) when it cannot. With a shared `queue`, `requests`
        (jobs/payload.py) are kept and the job is appended to the queue in the same step."""

    @abstractmethod
    async def get(self, job_id: str) -> JobRecord | None:
        """The job, or None (never made, or forgotten)."""

    @abstractmethod
    async def update(
        self, job_id: str, change: Change, result: StoredResult | None = None
    ) -> tuple[JobRecord | None, bool]:
        """Apply `change` to the current record atomically (and keep `result` with it); (record, changed)."""

    @abstractmethod
    async def room_for(self, size: int) -> bool:
        """Make room for a result of `size` bytes (forgetting the oldest finished results); False if it cannot."""

    @abstractmethod
    async def read(self, job_id: str, part: str = "result") -> Stream | None:
        """A finished job's stored part (PARTS) in chunks, or None."""

    async def result(self, job_id: str) -> bytes | None:
        """The finished job's predictions (JSON) in one piece, or None (tests and small results)."""
        stream = await self.read(job_id)
        if stream is None:
            return None
        return b"".join([chunk async for chunk in stream.chunks])

    @abstractmethod
    async def delete(self, job_id: str) -> None:
        """Forget the job and its result."""

    @abstractmethod
    async def recent(self, owner: str, api: str, limit: int, after: str | None = None, ascending: bool = False) -> Page:
        """`owner`'s jobs made through `api`, newest first (or oldest with `ascending`), at most `limit`, from the
        one after the job `after` (an empty page when `after` is not one of them)."""

    watchers: Watchers  # set by each store: its event streams in this process

    def watch(self, job_id: str) -> contextlib.AbstractAsyncContextManager[AsyncIterator[JobRecord]]:
        """The job's records as they change, from now on (enter before reading the current record)."""
        return self.watchers.watch(job_id)

    async def announce_cancel(self, job_id: str) -> None:  # noqa: B027 - one replica: nobody else to tell
        """Tell the replica that runs `job_id` to stop it (the record already says cancelled)."""

    async def cancellations(self) -> AsyncIterator[str]:
        """Ids of jobs other replicas cancelled; a single-replica store never yields."""
        await asyncio.Event().wait()
        yield ""  # pragma: no cover - unreachable, makes this an async generator


def offer(queue: asyncio.Queue[JobRecord], record: JobRecord) -> None:
    """Queue a change for a watcher; a full queue drops its oldest entry (a newer record supersedes it)."""
    if queue.full():
        queue.get_nowait()
    queue.put_nowait(record)
