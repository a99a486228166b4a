"""A job's changes as events: the current state first, then each change until the job ends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

from .records import JobRecord
from .store import JobStore

IDLE_SECONDS = 15.0  # a stream with nothing new re-reads the job (and sends a keep-alive) this often


async def follow(
    store: JobStore, job_id: str, get: Callable[[str], Awaitable[JobRecord]], idle: float = IDLE_SECONDS
) -> AsyncIterator[tuple[str, JobRecord | None]]:
    """(event, record): the current state (named by its status), then "progress" for each step and the new
    status at each change, until the job ends; ("keep-alive", None) after `idle` seconds without news, when
    the job is also re-read (a missed message, or a replica that died). `get` raises for a job that is gone."""
    async with store.watch(job_id) as changes:
        reader = _Reader(changes)
        try:
            last = await get(job_id)  # after subscribing: no change can slip between
            yield last.status, last
            while not last.finished:
                change = await reader.next(idle)
                if change is None:
                    yield "keep-alive", None
                    change = await get(job_id)
                    if change == last:
                        continue
                yield (change.status if change.status != last.status else "progress"), change
                last = change
        finally:
            reader.close()


class _Reader:
    """Reads changes with a time limit, keeping the pending read across timeouts (cancelling it could lose
    a message)."""

    def __init__(self, changes: AsyncIterator[JobRecord]) -> None:
        self.changes = changes
        self.pending: asyncio.Future[JobRecord] | None = None

    async def next(self, seconds: float) -> JobRecord | None:
        """The next change, or None after `seconds` without one."""
        if self.pending is None:
            self.pending = asyncio.ensure_future(anext(self.changes))
        done, _ = await asyncio.wait({self.pending}, timeout=seconds)
        if not done:
            return None
        pending, self.pending = self.pending, None
        return pending.result()

    def close(self) -> None:
        """Drop the pending read."""
        if self.pending is not None:
            self.pending.cancel()
