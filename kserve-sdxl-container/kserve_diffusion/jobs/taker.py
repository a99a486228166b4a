"""Taking jobs from the shared queue: each replica takes the next job only when its accelerator is free, holds a
lease on it while it runs, and takes over jobs whose replica stopped renewing its lease (it died).

At-least-once: a job whose replica died runs again elsewhere, with the same requests and seed (chosen at
submission), so the same result; `attempt` counts the tries, and after --job_max_attempts the job is failed.
A job handed back at shutdown is taken again without counting against that limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol

from ..errors import JobStoreUnavailable
from ..runtime import metrics
from ..runtime.service import GenerationService, Prepared
from . import payload
from .local import LocalJob, LocalJobs
from .records import JobRecord, log_ref
from .redis_queue import REDIS_ERRORS, Entry, RedisQueue
from .store import JobStore

logger = logging.getLogger("kserve.diffusion")
IDLE_POLL = 0.05  # seconds between looks at a busy accelerator
READ_BLOCK_MS = 1000  # a free replica waits this long for a new entry, then looks for lapsed leases again
SPEED_EVERY = 5.0  # seconds between reports of this replica's speed (and liveness) to the others
RETRY_SECONDS = 1.0  # pause after Redis failed, before trying again
GONE_AFTER_LEASES = 20  # a consumer that held nothing and read nothing for this many leases is a gone replica


class Runs(Protocol):
    """What the taker needs of the job manager (manager.py), which starts it."""

    service: GenerationService
    store: JobStore
    replica: str
    local: LocalJobs

    def run_taken(self, record: JobRecord, items: list[Prepared], held: Entry) -> LocalJob:
        """Run a job taken from the shared queue here."""
        ...


class QueueTaker:
    """This replica's loop over the shared queue (started by JobManager.start with a Redis store)."""

    def __init__(self, manager: Runs, queue: RedisQueue) -> None:
        self.manager = manager
        self.queue = queue
        self.service = manager.service
        self.config = manager.service.config
        self.replica = manager.replica
        self._failing = False

    def _free(self) -> bool:
        """Whether this replica may take a job now: serving, not draining, nothing running or waiting here."""
        worker = self.service.worker
        busy = worker.running or worker.waiting or self.manager.local.jobs
        return self.service.ready and not self.service.draining and not busy

    async def run(self) -> None:
        """Forever: when free, take a lapsed job or the next new one and run it; survive Redis going away."""
        reporting = asyncio.create_task(self._report_forever())
        try:
            await self._take_forever()
        finally:
            reporting.cancel()

    async def _take_forever(self) -> None:
        while True:
            try:
                if not self._free():
                    await asyncio.sleep(IDLE_POLL)
                    continue
                lapsed = await self.queue.next_lapsed(self.replica, self.config.job_lease_seconds)
                held = lapsed or await self.queue.next_new(self.replica, READ_BLOCK_MS)
                if held is not None and not self._free():
                    # A :predict came in while the read waited: the job must not wait behind it here. Given back
                    # untouched, the next free replica claims it at once.
                    await self.queue.hand_back(held, self.replica)
                elif held is not None:
                    await self._take(held, lapsed=lapsed is not None)
                if self._failing:
                    logger.info("job store %s: the shared queue answers again", self.manager.store.name)
                    self._failing = False
            except (JobStoreUnavailable, *REDIS_ERRORS) as exc:
                if not self._failing:
                    store, reason = self.manager.store.name, type(exc).__name__
                    logger.warning("job store %s: shared queue unreadable (%s); retrying", store, reason)
                    self._failing = True
                metrics.JOB_STORE_ERRORS.inc()
                await asyncio.sleep(RETRY_SECONDS)
            except Exception:  # a bug must not stop this replica from ever taking a job again
                logger.exception("taking a job from the shared queue failed; going on")
                await asyncio.sleep(RETRY_SECONDS)

    async def _report_forever(self) -> None:
        """Every SPEED_EVERY seconds, busy or not: the shared queue's length for /metrics, and this replica's
        speed (and liveness) for the others' estimates."""
        while True:
            with contextlib.suppress(*REDIS_ERRORS):
                metrics.SHARED_QUEUE_LENGTH.set(await self.queue.waiting())
                await self.queue.report_speed(self.replica, self.service.worker.mean_run_time())
                await self.queue.forget_gone_replicas(GONE_AFTER_LEASES * self.config.job_lease_seconds)
            await asyncio.sleep(SPEED_EVERY)

    async def _take(self, held: Entry, lapsed: bool) -> None:
        """Mark the job this replica's next try (or failed, after its last), then run it here."""
        max_attempts = self.config.job_max_attempts
        seen: dict[str, bool] = {}

        def take(record: JobRecord) -> JobRecord | None:
            if record.finished:
                return None
            handed_back = seen["handed_back"] = record.status == "queued" and record.replica is None
            if lapsed and not handed_back and record.attempt >= max_attempts:
                message = f"the replicas running this job stopped ({record.attempt} tries, --job_max_attempts)"
                return record.ended("failed", {"status": 503, "message": message + "; submit it again"})
            if not lapsed and (record.status != "queued" or record.replica is not None):
                return None  # a new entry whose job is not waiting any more: nothing to run
            fresh = {"step": 0, "step_at": None, "started_at": None, "eta_seconds": None, "queue_position": 0}
            return record.replace(status="queued", attempt=record.attempt + 1, replica=self.replica, **fresh)

        record, changed = await self.manager.store.update(held.job_id, take)
        if record is not None and not changed and not record.finished:
            await self.queue.drop(held)  # another entry of the same job (a retried submission) is the live one
            return
        if record is None or not changed or record.finished:
            if record is not None and record.finished and changed:
                metrics.JOBS.labels(status="failed").inc()
                logger.error("job=%s failed: %s", log_ref(held.job_id), (record.error or {}).get("message"))
            await self.queue.remove(held.job_id)  # ended, cancelled or gone: out of the queue
            return
        data = await self.queue.requests(held.job_id)
        if data is None:  # its requests expired with it: nothing to run
            await self.queue.remove(held.job_id)
            return
        try:
            items = await asyncio.get_running_loop().run_in_executor(None, payload.decode, data, self.service.limits)
        except Exception as exc:  # stored by a replica of another version or with other limits: fail, do not loop
            await self._unreadable(record, exc)
            return
        metrics.JOBS_TAKEN.inc()
        why = ""
        if lapsed and not seen.get("handed_back"):
            metrics.JOBS_RETAKEN.inc()
            why = ", its replica stopped renewing its lease"
        elif lapsed:
            why = ", handed back by a replica that shut down"
        logger.info("job=%s taken from the shared queue (attempt %d%s)", log_ref(held.job_id), record.attempt, why)
        job = self.manager.run_taken(record, items, held)
        renewing = asyncio.create_task(self._renew(job, held))
        try:
            assert job.task is not None
            await asyncio.shield(job.task)
        finally:
            renewing.cancel()
            with contextlib.suppress(BaseException):
                await renewing

    async def _unreadable(self, record: JobRecord, exc: Exception) -> None:
        """A taken job whose stored requests this replica cannot read: failed (this try's write), and dropped."""
        logger.error("job=%s: its stored request cannot be read here (%s)", log_ref(record.id), type(exc).__name__)
        error = {
            "status": 400,
            "message": "this replica cannot read the job's request (a different server version "
            "or limits); submit it again",
        }

        def failed(current: JobRecord) -> JobRecord | None:
            held = current.held_by(self.replica, record.attempt) and not current.finished
            return current.ended("failed", error) if held else None

        _, changed = await self.manager.store.update(record.id, failed)
        if changed:
            metrics.JOBS.labels(status="failed").inc()
        await self.queue.remove(record.id)

    async def _renew(self, job: LocalJob, held: Entry) -> None:
        """While the job runs: renew the lease every third of --job_lease_seconds; a renewal the record refuses
        means another replica took the job (or it ended): this try stops."""
        every = self.config.job_lease_seconds / 3
        while True:
            await asyncio.sleep(every)
            try:
                held_still = await self.queue.renew(held, self.replica, self.replica, job.attempt)
            except REDIS_ERRORS as exc:
                logger.warning("job=%s: lease not renewed (%s)", job.ref, type(exc).__name__)
                continue
            if held_still:
                metrics.JOB_LEASE_RENEWALS.inc()
                continue
            record = await self.manager.store.get(job.id)
            if record is not None and not record.held_by(self.replica, job.attempt):
                self.manager.local.taken_by_another(job)
            return
