"""The jobs this replica runs: their progress from the accelerator thread to the store (rate-limited),
their start, their queue positions and estimates, and stopping them when cancelled (here or elsewhere)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..api.request import GenerationRequest
from ..errors import JobCancelled, JobStoreLost, JobStoreUnavailable, JobTakenOver
from ..runtime import metrics
from ..runtime.control import RequestControl
from ..runtime.service import Prepared
from ..runtime.worker import GenerationWorker, Reservation
from .records import JobRecord, log_ref
from .redis_queue import Entry
from .store import JobStore

logger = logging.getLogger("kserve.diffusion")
PROGRESS_INTERVAL = 0.05  # at most 20 progress writes (and SSE events) a second per job
POSITION_INTERVAL = 0.5  # how often queued jobs' positions and estimates are refreshed
Change = Callable[[JobRecord], JobRecord | None]


def planned_steps(request: GenerationRequest) -> int:
    """Denoising steps the request will run, as far as it is known before it runs (img2img and inpaint run
    num_inference_steps x strength; a refiner's steps are counted when they happen)."""
    steps = request.num_inference_steps or 1
    if request.task_type in ("img2img", "inpaint") and request.strength is not None:
        steps = max(1, int(steps * request.strength))
    return steps


@dataclass
class LocalJob:
    """A job this replica runs."""

    id: str
    items: list[Prepared]
    controls: list[RequestControl]
    waiting_ahead: int  # requests queued ahead of it at submission
    dequeued_at_submission: int
    reservation: Reservation  # its place in the queue, held until it ends
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    steps_done: int = 0  # steps of its finished instances
    last_progress: float = 0.0  # monotonic time of the last progress write
    pending_step: tuple[int, float] | None = None  # the newest step not yet written, and when it finished
    writer: asyncio.Task[None] | None = None
    task: asyncio.Task[None] | None = None
    position: int | None = None  # the queue position last written
    started: bool = False
    lost: bool = False  # the store no longer holds its record
    attempt: int = 1  # which try of the job this is: every write checks the record still says so
    held: Entry | None = None  # its shared-queue entry (the lease), when taken from the shared queue
    taken_over: bool = False  # its lease lapsed and another replica holds the job now

    @property
    def ref(self) -> str:
        """What the logs call it."""
        return log_ref(self.id)


def _running(record: JobRecord) -> JobRecord | None:
    return record.running(time.time()) if record.status == "queued" else None


class LocalJobs:
    """The jobs this replica runs, and how their state reaches the store."""

    def __init__(self, store: JobStore, worker: GenerationWorker, replica: str) -> None:
        self.store = store
        self.worker = worker
        self.replica = replica
        self.jobs: dict[str, LocalJob] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    def watch_worker(self, job: LocalJob, control: RequestControl, first: bool) -> None:
        """Hook the job's status and progress to `control` (on the accelerator thread)."""
        self._loop = asyncio.get_running_loop()
        if first:
            control.on_started = lambda: self._call(self._started, job)
        control.on_progress = lambda steps: self._progress_from_worker(job, steps)

    def _call(self, function: Callable[..., None], *args: object) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(function, *args)

    def _started(self, job: LocalJob) -> None:
        job.started = True
        metrics.JOBS.labels(status="running").inc()
        job.writer = asyncio.create_task(self.write(job, _running))

    def _progress_from_worker(self, job: LocalJob, steps: int) -> None:
        """On the accelerator thread, after each step: hand the newest step to the event loop, at most every
        PROGRESS_INTERVAL (the accelerator never waits for the store)."""
        now = time.monotonic()
        if now - job.last_progress < PROGRESS_INTERVAL:
            return
        job.last_progress = now
        self._call(self._progress, job, job.steps_done + steps, time.time())

    def _progress(self, job: LocalJob, step: int, at: float) -> None:
        job.pending_step = (step, at)
        if job.writer is None or job.writer.done():
            job.writer = asyncio.create_task(self._write_progress(job, job.writer))

    async def _write_progress(self, job: LocalJob, before: asyncio.Task[None] | None) -> None:
        if before is not None:
            await before  # the running status is written first
        while job.pending_step is not None:
            (step, at), job.pending_step = job.pending_step, None

            def advance(record: JobRecord, step: int = step, at: float = at) -> JobRecord | None:
                if record.status != "running" or step <= record.step:
                    return None
                total = max(record.total_steps, step)
                elapsed = time.time() - (record.started_at or time.time())
                eta = round(elapsed / step * (total - step), 1)
                return record.replace(step=step, step_at=at, total_steps=total, eta_seconds=eta)

            await self.write(job, advance)

    async def settle(self, job: LocalJob) -> None:
        """Wait for the job's pending status and progress writes (before its end is written)."""
        if job.writer is not None:
            with contextlib.suppress(Exception):
                await job.writer

    def fenced(self, job: LocalJob, change: Change) -> Change:
        """`change`, applied only while the record says this try of the job holds it."""

        def apply(record: JobRecord) -> JobRecord | None:
            return change(record) if record.held_by(self.replica, job.attempt) else None

        return apply

    async def write(self, job: LocalJob, change: Change) -> None:
        """A progress or status write; a record that says cancelled (or is gone, or held by another replica's
        try) stops the job here too."""
        try:
            record, _ = await self.store.update(job.id, self.fenced(job, change))
        except JobStoreUnavailable:
            metrics.JOB_STORE_ERRORS.inc()
            return
        if record is None:
            self.lose(job)
        elif not record.held_by(self.replica, job.attempt):
            self.taken_by_another(job)
        elif record.status == "cancelled":
            self.stop(job.id)

    def taken_by_another(self, job: LocalJob) -> None:
        """Another replica took the job after this one's lease lapsed (this one was paused or cut off): this try
        stops at its next step and writes nothing more."""
        if job.taken_over:
            return
        job.taken_over = True
        logger.warning("job=%s: another replica took this job over (this replica's lease lapsed); stopping", job.ref)
        for control in job.controls:
            control.cancel(JobTakenOver, "another replica took the job over")
        job.stop.set()

    def lose(self, job: LocalJob) -> None:
        """The store no longer holds the job's record: "store lost" (log, metric), the job stops. A job that was
        cancelled first and then deleted (OpenAI's delete) is not lost: it was forgotten on purpose."""
        if job.lost:
            return
        job.lost = True
        if job.stop.is_set():
            logger.info("job=%s stopped; it was deleted", job.ref)
            return
        metrics.JOB_STORE_LOST.inc()
        logger.error(
            "job=%s: the job store no longer holds this job (evicted by a Redis maxmemory-policy, or Redis lost its "
            "data); stopping it. Run Redis with maxmemory-policy noeviction (docs/jobs.md)",
            job.ref,
        )
        for control in job.controls:
            control.cancel(JobStoreLost, "the job store lost the job")
        job.stop.set()

    def queued_eta(self, ahead: int) -> float | None:
        """Seconds until a job with `ahead` requests queued before it is done: those, the running one and
        itself, at the recent mean generation time (None before the first generation)."""
        mean = self.worker.mean_run_time()
        if mean is None:
            return None
        return round((ahead + self.worker.running + 1) * mean, 1)

    async def refresh_positions(self) -> None:
        """Forever: write the new queue position (and estimate) of each queued job when it moves."""
        while True:
            await asyncio.sleep(POSITION_INTERVAL)
            for job in list(self.jobs.values()):
                if job.started or job.stop.is_set():
                    continue
                position = max(0, job.waiting_ahead - (self.worker.dequeued - job.dequeued_at_submission))
                if position != job.position:
                    job.position = position
                    eta = self.queued_eta(position)

                    def move(record: JobRecord, p: int = position, e: float | None = eta) -> JobRecord | None:
                        return record.replace(queue_position=p, eta_seconds=e) if record.status == "queued" else None

                    await self.write(job, move)

    def stop(self, job_id: str) -> bool:
        """Stop a job this replica runs: dropped from the queue, or at its next step. False if not ours."""
        job = self.jobs.get(job_id)
        if job is None:
            return False
        for control in job.controls:
            control.cancel(JobCancelled, "the job was cancelled")
        job.stop.set()
        return True

    async def listen_for_cancels(self) -> None:
        """Forever: stop the jobs other replicas cancel."""
        async for job_id in self.store.cancellations():
            if self.stop(job_id):
                logger.info("job=%s cancelled from another replica", log_ref(job_id))

    async def drain(self) -> None:
        """Wait until every local job has written its end."""
        tasks = [job.task for job in self.jobs.values() if job.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=30)
