"""The one thread that owns the accelerator: requests run first-in first-out, one at a time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Timed(Generic[T]):
    """A job's result with how long it waited in the queue and how long it ran."""

    value: T
    queue_wait: float
    run_time: float


class GenerationWorker:
    """Runs jobs on a single dedicated thread; an exception fails its job, never the thread."""

    def __init__(self) -> None:
        # One thread: the executor's queue gives FIFO order and the thread survives any job's error.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="accelerator")

    async def run(self, job: Callable[[], T]) -> Timed[T]:
        """Queue `job`, await its result without blocking the event loop."""
        submitted = time.perf_counter()

        def timed() -> Timed[T]:
            started = time.perf_counter()
            value = job()
            return Timed(value, started - submitted, time.perf_counter() - started)

        return await asyncio.wrap_future(self._executor.submit(timed))

    def shutdown(self) -> None:
        """Finish the running job, drop nothing queued, stop the thread."""
        self._executor.shutdown(wait=True)
