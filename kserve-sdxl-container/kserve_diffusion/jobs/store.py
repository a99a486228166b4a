"""What a job store does, and the in-memory store (one replica).

Every store keeps records and results, changes a record atomically (`update`: the change sees the
current record, so a cancel and a finish cannot both win), tells watchers of each change (the SSE
stream), forgets finished jobs after --job_ttl_seconds, and carries cancel requests to the replica that
runs the job (`announce_cancel` / `cancellations`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from ..errors import JobStoreUnavailable
from .records import JobRecord

Change = Callable[[JobRecord], JobRecord | None]  # the new record, or None to leave it as it is
WATCH_BUFFER = 64  # changes a slow watcher may fall behind by; the oldest progress is dropped first


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
        """Keep a new job; JobStoreUnavailable when it cannot."""

    @abstractmethod
    async def get(self, job_id: str) -> JobRecord | None:
        """The job, or None (never made, or forgotten)."""

    @abstractmethod
    async def update(self, job_id: str, change: Change, result: bytes | None = None) -> tuple[JobRecord | None, bool]:
        """Apply `change` to the current record atomically (and keep `result` with it); (record, changed)."""

    @abstractmethod
    async def result(self, job_id: str) -> bytes | None:
        """The finished job's result (the predictions as JSON), or None."""

    @abstractmethod
    async def delete(self, job_id: str) -> None:
        """Forget the job and its result."""

    @abstractmethod
    async def recent(self, limit: int, api: str | None = None) -> list[JobRecord]:
        """The newest jobs first, at most `limit`, only those made through `api` when given."""

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
    result: bytes | None = None
    expires: float | None = None  # monotonic time, once finished


class MemoryJobStore(JobStore):
    """Jobs in this process: at most `max_jobs`, at most `max_result_bytes` of results, finished ones kept
    `ttl` seconds. The oldest finished jobs are forgotten first; with every job unfinished it is full."""

    def __init__(self, max_jobs: int, max_result_bytes: int, ttl: float) -> None:
        self.max_jobs = max_jobs
        self.max_result_bytes = max_result_bytes
        self.ttl = ttl
        self._jobs: dict[str, _Kept] = {}  # in creation order
        self._result_bytes = 0
        self._watchers: dict[str, set[asyncio.Queue[JobRecord]]] = {}

    def _forget(self, job_id: str) -> None:
        kept = self._jobs.pop(job_id, None)
        if kept is not None and kept.result is not None:
            self._result_bytes -= len(kept.result)

    def _sweep(self) -> None:
        now = time.monotonic()
        for job_id in [k for k, kept in self._jobs.items() if kept.expires is not None and kept.expires <= now]:
            self._forget(job_id)

    def _forget_oldest_finished(self) -> bool:
        oldest = next((k for k, kept in self._jobs.items() if kept.record.finished), None)
        if oldest is None:
            return False
        self._forget(oldest)
        return True

    async def create(self, record: JobRecord) -> None:
        """Keep a new job, forgetting the oldest finished one when --max_jobs are kept."""
        self._sweep()
        if len(self._jobs) >= self.max_jobs and not self._forget_oldest_finished():
            raise JobStoreUnavailable(
                f"the job store is full: {self.max_jobs} jobs are queued or running (--max_jobs); retry later",
                retry_after=30,
            )
        self._jobs[record.id] = _Kept(record)

    async def get(self, job_id: str) -> JobRecord | None:
        """The job, or None."""
        self._sweep()
        kept = self._jobs.get(job_id)
        return kept.record if kept else None

    async def update(self, job_id: str, change: Change, result: bytes | None = None) -> tuple[JobRecord | None, bool]:
        """Change the record (one event loop: nothing runs in between); keep the result within the byte limit."""
        self._sweep()
        kept = self._jobs.get(job_id)
        if kept is None:
            return None, False
        new = change(kept.record)
        if new is None:
            return kept.record, False
        if result is not None:
            while self._result_bytes + len(result) > self.max_result_bytes and self._forget_oldest_finished():
                pass
            kept.result = result
            self._result_bytes += len(result)
        kept.record = new
        if new.finished:
            kept.expires = time.monotonic() + self.ttl
        for queue in self._watchers.get(job_id, ()):
            _offer(queue, new)
        return new, True

    async def result(self, job_id: str) -> bytes | None:
        """The result, or None."""
        self._sweep()
        kept = self._jobs.get(job_id)
        return kept.result if kept else None

    async def delete(self, job_id: str) -> None:
        """Forget the job."""
        self._forget(job_id)

    async def recent(self, limit: int, api: str | None = None) -> list[JobRecord]:
        """Newest first."""
        self._sweep()
        found = []
        for kept in reversed(self._jobs.values()):
            if api is None or kept.record.api == api:
                found.append(kept.record)
                if len(found) == limit:
                    break
        return found

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


def _offer(queue: asyncio.Queue[JobRecord], record: JobRecord) -> None:
    """Queue a change for a watcher; a full queue drops its oldest entry (a newer record supersedes it)."""
    if queue.full():
        queue.get_nowait()
    queue.put_nowait(record)
