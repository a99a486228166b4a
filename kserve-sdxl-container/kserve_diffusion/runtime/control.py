"""One request's deadline, cancellation and progress, checked by the pipelines at every denoising step."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

from ..errors import DeadlineExceeded, ServingError

logger = logging.getLogger("kserve.diffusion")
PROGRESS_LOG_SECONDS = 5.0  # at most one progress line per request this often
# Set by the server's disconnect watcher for each HTTP request: the event fires when the client leaves.
CLIENT_DISCONNECTED: ContextVar[asyncio.Event | None] = ContextVar("client_disconnected", default=None)


class RequestControl:
    """Shared by the event loop (which cancels) and the accelerator thread (which checks at each step)."""

    def __init__(self, request_id: str, timeout: float, clock: Any = time.monotonic):
        self.request_id = request_id
        self.timeout = timeout
        self._clock = clock
        self.deadline = clock() + timeout
        self._stop: type[Exception] | None = None
        self._stop_reason = ""
        self._lock = threading.Lock()
        self.steps = 0  # denoising steps run, over all pipeline calls of the request
        self._last_log = clock()
        # Set by a job: told (on the accelerator thread) when the request starts and after each step.
        self.on_started: Callable[[], None] | None = None
        self.on_progress: Callable[[int], None] | None = None  # the steps run so far
        self.cache: tuple[int, int] | None = None  # --cache: (attention layers skipped, of these many)

    def cache_skipped(self, skipped: int, total: int) -> None:
        """What --cache skipped of this request (accelerator thread, after the pipeline call)."""
        self.cache = (skipped, total)

    def started(self) -> None:
        """The worker took the request off the queue and is about to run it."""
        if self.on_started is not None:
            self.on_started()

    def remaining(self) -> float:
        """Seconds until the deadline (negative once passed)."""
        return self.deadline - self._clock()

    def cancel(self, reason: type[ServingError], message: str) -> None:
        """Stop the request: dropped if it has not started, interrupted at its next step if it runs."""
        with self._lock:
            if self._stop is None:
                self._stop, self._stop_reason = reason, message

    def stopping(self, where: str) -> Exception | None:
        """The exception to stop with (its reason and `where`), or None when not told to stop."""
        with self._lock:
            stop, reason = self._stop, self._stop_reason
        return stop(f"{reason} ({where})") if stop is not None else None

    def check(self, where: str) -> None:
        """Raise the reason to stop (client gone, shutting down, deadline passed), if any; `where` says when."""
        with self._lock:
            stop, reason = self._stop, self._stop_reason
        if stop is not None:
            raise stop(f"{reason} ({where})")
        if self.remaining() <= 0:
            raise DeadlineExceeded(f"the request's {self.timeout:g} s timeout passed {where}")

    def on_step(self, pipeline: Any, step: int, timestep: Any, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
        """diffusers' `callback_on_step_end`: count, log progress at a bounded rate, stop when told to."""
        self.steps += 1
        total = getattr(pipeline, "num_timesteps", None) or "?"
        if self.on_progress is not None:
            self.on_progress(self.steps)
        now = self._clock()
        if now - self._last_log >= PROGRESS_LOG_SECONDS:
            self._last_log = now
            logger.info("request=%s step %d of %s", self.request_id, step + 1, total)
        self.check(f"after step {step + 1} of {total}")
        return callback_kwargs
