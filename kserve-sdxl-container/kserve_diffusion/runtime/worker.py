"""The one thread that owns the accelerator: a bounded first-in first-out queue, one job at a time.

A request that finds the queue full is refused at once (503 with a Retry-After estimate); one whose
deadline passes or whose client leaves while it waits is dropped without running; one that is running
stops at its next denoising step (its RequestControl raises there). A failed job never stops the thread.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

import torch

from ..errors import ClientGone, DeadlineExceeded, ServerBusy
from ..pipelines.base import DecodeOutOfMemory
from .control import RequestControl

T = TypeVar("T")
logger = logging.getLogger("kserve.diffusion")
RECENT_RUNS = 8  # generation times kept for the Retry-After estimate


@dataclass(frozen=True)
class Timed(Generic[T]):
    """A job's result with how long it waited in the queue and how long it ran."""

    value: T
    queue_wait: float
    run_time: float


class AcceleratorOutOfMemory(Exception):
    """A job ran out of memory; the worker has already freed what it could. `in_decode`: in the VAE decode,
    after every denoising step."""

    def __init__(self, message: str, in_decode: bool = False):
        super().__init__(message)
        self.in_decode = in_decode


def free_memory() -> None:
    """Give back what a failed generation left: Python garbage and PyTorch's cached CUDA blocks."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class Reservation:
    """A job's place in the queue, taken at submission and kept across its instances: a job that was accepted
    is never refused later for a full queue. While `held`, the place counts as a waiting request."""

    def __init__(self, worker: GenerationWorker) -> None:
        self.worker = worker
        self.held = True

    def hold_again(self) -> None:
        """Between two instances: keep the place (no room check: it was the job's already)."""
        if not self.held:
            with self.worker._lock:
                self.worker.waiting += 1
            self.held = True

    def release(self) -> None:
        """The job has ended (or never ran): give the place back."""
        if self.held:
            with self.worker._lock:
                self.worker.waiting -= 1
                self.worker.dequeued += 1
            self.held = False


class GenerationWorker:
    """Runs jobs on a single dedicated thread, at most `max_queue` waiting behind the running one."""

    def __init__(self, max_queue: int) -> None:
        # One thread: the executor's queue gives FIFO order and the thread survives any job's error.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="accelerator")
        self.max_queue = max_queue
        self._lock = threading.Lock()
        self.waiting = 0  # admitted, not started
        self.running = 0  # 0 or 1
        self.dequeued = 0  # requests that left the queue (started or dropped): queue positions count these
        self._recent: deque[float] = deque(maxlen=RECENT_RUNS)

    def mean_run_time(self) -> float | None:
        """The mean of the recent generation times (None before the first)."""
        return sum(self._recent) / len(self._recent) if self._recent else None

    def retry_after(self) -> int:
        """Seconds until a slot is likely free: the jobs ahead times the recent mean generation time."""
        return max(1, math.ceil((self.waiting + self.running) * (self.mean_run_time() or 1.0)))

    def _refuse_when_full(self) -> None:
        if self.waiting >= self.max_queue:
            raise ServerBusy(
                f"the queue is full ({self.max_queue} requests wait behind the running one); "
                f"retry after about {self.retry_after()} s",
                self.retry_after(),
            )

    def check_room(self) -> None:
        """Raise ServerBusy now if the queue is full: a request that would be refused is refused before its
        input images are fetched and decoded."""
        with self._lock:
            self._refuse_when_full()

    def reserve(self) -> Reservation:
        """A place in the queue for a job (ServerBusy when full), kept until the job releases it."""
        with self._lock:
            self._refuse_when_full()
            self.waiting += 1
        return Reservation(self)

    def _admit(self, control: RequestControl, reservation: Reservation | None) -> None:
        with self._lock:
            position = self.waiting + self.running
            if reservation is not None and reservation.held:
                reservation.held = False  # its place is this run's now: the run gives it back when it starts
                position -= 1
            else:
                self._refuse_when_full()
                self.waiting += 1
        if position:
            logger.info("request=%s waits at queue position %d", control.request_id, position)

    def _start(self) -> None:
        with self._lock:
            self.waiting -= 1
            self.dequeued += 1
            self.running = 1

    async def run(
        self,
        job: Callable[[RequestControl], T],
        control: RequestControl,
        disconnected: asyncio.Event | None = None,
        reservation: Reservation | None = None,
    ) -> Timed[T]:
        """Queue `job` (in the place `reservation` holds, if given); await its result without blocking the event
        loop. Raises ServerBusy when the queue is full and no place is reserved; DeadlineExceeded or ClientGone
        (once `disconnected` is set) at once while it waits, and at the next step while it runs;
        AcceleratorOutOfMemory after freeing memory."""
        self._admit(control, reservation)
        submitted = time.perf_counter()

        def timed() -> Timed[T]:
            self._start()
            try:
                control.started()
                control.check(f"after waiting {time.perf_counter() - submitted:.1f} s in the queue")
                started = time.perf_counter()
                try:
                    value = job(control)
                except (torch.OutOfMemoryError, MemoryError) as exc:
                    free_memory()
                    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                    raise AcceleratorOutOfMemory(message, isinstance(exc, DecodeOutOfMemory)) from exc
                run_time = time.perf_counter() - started
                self._recent.append(run_time)
                return Timed(value, started - submitted, run_time)
            finally:
                with self._lock:
                    self.running = 0

        future = self._executor.submit(timed)
        result = asyncio.wrap_future(future)
        left = asyncio.ensure_future(disconnected.wait()) if disconnected is not None else None
        try:
            waits = {result, left} if left is not None else {result}
            done, _ = await asyncio.wait(
                waits, timeout=max(control.remaining(), 0), return_when=asyncio.FIRST_COMPLETED
            )
            if result in done:
                return result.result()
            if left is not None and left in done:
                control.cancel(ClientGone, "the client disconnected")
                # The first reason given wins: a cancelled job says so, not that its client left.
                stop: Exception | None = control.stopping("while the request waited in the queue")
                assert stop is not None  # cancel() just gave a reason, if none was given before
            else:
                stop = DeadlineExceeded(
                    f"the request's {control.timeout:g} s timeout passed while it waited in the queue; it did not run"
                )
            if self._drop(future):
                raise stop
            # Running: it stops at its next denoising step, raising what `control` says.
            return await result
        except asyncio.CancelledError:
            control.cancel(ClientGone, "the request was cancelled")
            self._drop(future)
            raise
        finally:
            if left is not None:
                left.cancel()

    def call(self, job: Callable[[], T]) -> T:
        """Run `job` on the accelerator thread and wait for it (startup work such as the warm-up)."""
        return self._executor.submit(job).result()

    def _drop(self, future: Future) -> bool:
        if future.cancel():
            with self._lock:
                self.waiting -= 1
                self.dequeued += 1
            return True
        return False

    def shutdown(self) -> None:
        """Finish the running job and the queued ones, then stop the thread."""
        self._executor.shutdown(wait=True)
