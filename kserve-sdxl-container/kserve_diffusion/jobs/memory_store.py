"""The in-memory job store: one replica's jobs in its own process, within the bounds every store holds."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from .records import JobRecord
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
        self.watchers = Watchers()

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

    async def create(self, record: JobRecord, requests: bytes | None = None) -> None:
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
        self.watchers.tell(job_id, new)
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


async def _slices(view: memoryview) -> AsyncIterator[bytes]:
    """Slices of one buffer, without copying it (Starlette sends memoryviews as they are)."""
    for start in range(0, len(view), CHUNK_BYTES):
        yield view[start : start + CHUNK_BYTES]  # type: ignore[misc]
