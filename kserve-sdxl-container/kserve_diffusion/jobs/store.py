"""What a job store does, and the in-memory store (one replica).

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
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from ..errors import JobStoreUnavailable, TooManyJobs
from .records import JobRecord

Change = Callable[[JobRecord], JobRecord | None]  # the new record, or None to leave it as it is
WATCH_BUFFER = 64  # changes a slow watcher may fall behind by; the oldest progress is dropped first
CHUNK_BYTES = 1 << 20  # a result is read back in pieces of this size
PARTS = ("result", "content")  # the predictions as JSON; the file itself (a video's MP4, for /content)


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

    @abstractmethod
    async def create(self, record: JobRecord) -> None:
        """Keep a new job, forgetting finished ones to make room; JobStoreUnavailable (full, or unreachable) or
        TooManyJobs (its owner's jobs are all unfinished) when it cannot."""

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

    @abstractmethod
    def watch(self, job_id: str) -> contextlib.AbstractAsyncContextManager[AsyncIterator[JobRecord]]:
        """The job's records as they change, from now on (enter before reading the current record)."""

    async def announce_cancel(self, job_id: str) -> None:  # noqa: B027 - one replica: nobody else to tell
        """Tell the replica that runs `job_id` to stop it (the record already says cancelled)."""

    async def cancellations(self) -> AsyncIterator[str]:
        """Ids of jobs other replicas cancelled; a single-replica store never yields."""
        await asyncio.Event().wait()
        yield ""  # pragma: no cover - unreachable, makes this an async generator


@dataclass
class _Kept:
    record: JobRecord
    result: StoredResult | None = None
    expires: float | None = None  # monotonic time, once finished


class MemoryJobStore(JobStore):
    """Jobs in this process: at most `max_jobs` (`max_per_owner` per caller), at most `max_result_bytes` of
    results, finished ones kept `ttl` seconds."""

    def __init__(self, max_jobs: int, max_result_bytes: int, ttl: float, max_per_owner: int | None = None) -> None:
        self.max_jobs = max_jobs
        self.max_result_bytes = max_result_bytes
        self.max_per_owner = max_per_owner or max_jobs
        self.ttl = ttl
        self._jobs: dict[str, _Kept] = {}  # in creation order
        self._result_bytes = 0
        self._watchers: dict[str, set[asyncio.Queue[JobRecord]]] = {}

    def _forget(self, job_id: str) -> None:
        kept = self._jobs.pop(job_id, None)
        if kept is not None and kept.result is not None:
            self._result_bytes -= kept.result.size

    def _sweep(self) -> None:
        now = time.monotonic()
        for job_id in [k for k, kept in self._jobs.items() if kept.expires is not None and kept.expires <= now]:
            self._forget(job_id)

    def _forget_oldest_finished(self, owner: object = ..., with_result: bool | None = None) -> bool:
        """Forget the oldest finished job (of `owner` when given): one without a result first, unless
        `with_result` says which kind. False when there is none."""
        finished = [
            (k, kept)
            for k, kept in self._jobs.items()
            if kept.record.finished and (owner is ... or kept.record.owner == owner)
        ]
        kinds = (False, True) if with_result is None else (with_result,)
        for has_result in kinds:
            victim = next((k for k, kept in finished if (kept.result is not None) == has_result), None)
            if victim is not None:
                self._forget(victim)
                return True
        return False

    async def create(self, record: JobRecord) -> None:
        """Keep a new job, forgetting finished ones (the owner's, then anyone's) to make room."""
        self._sweep()
        owned = sum(1 for kept in self._jobs.values() if kept.record.owner == record.owner)
        if owned >= self.max_per_owner and not self._forget_oldest_finished(record.owner):
            raise too_many_for_owner(self.max_per_owner)
        if len(self._jobs) >= self.max_jobs and not self._forget_oldest_finished():
            raise store_full(self.max_jobs)
        self._jobs[record.id] = _Kept(record)

    async def get(self, job_id: str) -> JobRecord | None:
        """The job, or None."""
        self._sweep()
        kept = self._jobs.get(job_id)
        return kept.record if kept else None

    async def room_for(self, size: int) -> bool:
        """Forget the oldest finished results until `size` more bytes fit."""
        self._sweep()
        while self._result_bytes + size > self.max_result_bytes:
            if not self._forget_oldest_finished(with_result=True):
                return False
        return True

    async def update(
        self, job_id: str, change: Change, result: StoredResult | None = None
    ) -> tuple[JobRecord | None, bool]:
        """Change the record (one event loop: nothing runs in between); keep the result."""
        self._sweep()
        kept = self._jobs.get(job_id)
        if kept is None:
            return None, False
        new = change(kept.record)
        if new is None:
            return kept.record, False
        if result is not None:
            kept.result = result
            self._result_bytes += result.size
        kept.record = new
        if new.finished:
            kept.expires = time.monotonic() + self.ttl
        for queue in self._watchers.get(job_id, ()):
            offer(queue, new)
        return new, True

    async def read(self, job_id: str, part: str = "result") -> Stream | None:
        """The part as memoryview slices of the one stored copy."""
        self._sweep()
        kept = self._jobs.get(job_id)
        data = kept.result.part(part) if kept is not None and kept.result is not None else None
        if data is None:
            return None

        return Stream(len(data), _slices(memoryview(data)))

    async def delete(self, job_id: str) -> None:
        """Forget the job."""
        self._forget(job_id)

    async def recent(self, owner: str, api: str, limit: int, after: str | None = None, ascending: bool = False) -> Page:
        """The owner's jobs of `api` in creation order (or its reverse)."""
        self._sweep()
        mine = [kept.record for kept in self._jobs.values() if kept.record.owner == owner and kept.record.api == api]
        if not ascending:
            mine.reverse()
        if after is not None:
            ids = [record.id for record in mine]
            mine = mine[ids.index(after) + 1 :] if after in ids else []
        return Page(mine[:limit], len(mine) > limit)

    @contextlib.asynccontextmanager
    async def watch(self, job_id: str) -> AsyncIterator[AsyncIterator[JobRecord]]:
        """Changes to the job, through a bounded queue."""
        queue: asyncio.Queue[JobRecord] = asyncio.Queue(WATCH_BUFFER)
        self._watchers.setdefault(job_id, set()).add(queue)

        async def changes() -> AsyncIterator[JobRecord]:
            while True:
                yield await queue.get()

        try:
            yield changes()
        finally:
            watchers = self._watchers.get(job_id, set())
            watchers.discard(queue)
            if not watchers:
                self._watchers.pop(job_id, None)


async def _slices(view: memoryview) -> AsyncIterator[bytes]:
    """Slices of one buffer, without copying it (Starlette sends memoryviews as they are)."""
    for start in range(0, len(view), CHUNK_BYTES):
        yield view[start : start + CHUNK_BYTES]  # type: ignore[misc]


def offer(queue: asyncio.Queue[JobRecord], record: JobRecord) -> None:
    """Queue a change for a watcher; a full queue drops its oldest entry (a newer record supersedes it)."""
    if queue.full():
        queue.get_nowait()
    queue.put_nowait(record)
