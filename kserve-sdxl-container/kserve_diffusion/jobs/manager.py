"""Jobs: a generation submitted now and fetched later, run on this replica, seen from every replica.

A submission goes through the same checks as a synchronous request (validation, room in the queue,
input images) before it becomes a job, so a bad request is a 400 then, never a job that fails later.
The job then runs on this replica's accelerator queue; its status, progress, result and error go to
the store, where any replica reads them. A cancel is written to the store and, when another replica
runs the job, announced to it; the job stops at its next denoising step or never runs. Jobs do not
depend on the submitting connection: a client that leaves does not cancel its job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from ..api.request import GenerationRequest
from ..api.results import GenerationResult
from ..errors import (
    GenerationFailed,
    JobCancelled,
    JobFinished,
    JobNotFound,
    JobStoreUnavailable,
    RequestError,
    ServingError,
    ShuttingDown,
)
from ..runtime import metrics
from ..runtime.service import GenerationService
from . import events
from .local import LocalJob, LocalJobs, planned_steps
from .records import JobRecord, is_job_id, log_ref, new_job_id
from .store import JobStore

logger = logging.getLogger("kserve.diffusion")
Render = Callable[[list[GenerationResult]], bytes]  # a job's results as the stored predictions (JSON)
RESUBMIT = "the server shut down before the job finished; submit it again (another replica will run it)"
NOT_FOUND = "no job with this id here (ids come from a submission; finished jobs are forgotten after a while)"


class JobManager:
    """Submits, runs, cancels and shows the jobs of one served model."""

    def __init__(self, service: GenerationService, store: JobStore, render: Render) -> None:
        self.service = service
        self.store = store
        self.render = render
        self.local = LocalJobs(store, service.worker)
        self._background: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Connect the store; listen for cancels from other replicas; keep queue positions fresh."""
        await self.store.start()
        self._background = [
            asyncio.create_task(self.local.listen_for_cancels()),
            asyncio.create_task(self.local.refresh_positions()),
        ]

    async def close(self) -> None:
        """Stop the background tasks and let go of the store."""
        for task in self._background:
            task.cancel()
        await self.store.close()

    async def drain(self) -> None:
        """At shutdown, after the service has drained: wait until every local job has written its end (queued
        ones that could not run are failed, asking for a resubmission)."""
        await self.local.drain()

    async def submit(
        self,
        instances: list[Any],
        request_id: str,
        api: str = "kserve",
        describe: Callable[[list[GenerationRequest]], dict[str, Any]] | None = None,
    ) -> JobRecord:
        """Check the request as a synchronous one would be, then queue it as a job; the job's first record.
        `describe` gives what an API shows of the checked requests (kept in the record's `extra`)."""
        prepared = await self.service.prepare(instances)
        worker = self.service.worker
        record = JobRecord(
            id=new_job_id(),
            model=self.service.name,
            created_at=time.time(),
            total_steps=sum(planned_steps(item.request) for item in prepared),
            api=api,
            queue_position=worker.waiting,
            eta_seconds=self.local.queued_eta(worker.waiting),
            extra=describe([item.request for item in prepared]) if describe else {},
        )
        await self.store.create(record)
        job = LocalJob(
            record.id,
            prepared,
            [self.service.control(item.request, request_id) for item in prepared],  # deadlines from submission
            waiting_ahead=worker.waiting,
            dequeued_at_submission=worker.dequeued,
            position=worker.waiting,
        )
        self.local.jobs[job.id] = job
        job.task = asyncio.create_task(self._run(job))
        metrics.JOBS.labels(status="queued").inc()
        logger.info("request=%s job=%s submitted (%d instance(s))", request_id, job.ref, len(prepared))
        return record

    async def _run(self, job: LocalJob) -> None:
        results: list[GenerationResult] = []
        try:
            for index, (item, control) in enumerate(zip(job.items, job.controls, strict=True)):
                self.local.watch_worker(job, control, first=index == 0)
                results.append(await self.service.run(item, control, job.stop, note=f" job={job.ref}"))
                job.steps_done += control.steps
            body = await asyncio.get_running_loop().run_in_executor(None, self.render, results)
            limit = self.store.max_result_bytes
            if limit is not None and len(body) > limit:
                await self._end(job, "failed", {"status": 507, "message": _too_large(len(body), limit)})
            else:
                await self._end(job, "succeeded", result=body)
        except JobCancelled:
            await self._end(job, "cancelled")
        except ShuttingDown:
            await self._end(job, "failed", {"status": ShuttingDown.http_status, "message": RESUBMIT})
        except ServingError as exc:
            await self._end(job, "failed", {"status": exc.http_status, "message": exc.message})
        except RequestError as exc:  # found on the accelerator thread: an adapter that does not fit the model
            await self._end(job, "failed", {"status": 400, "message": str(exc)})
        except GenerationFailed as exc:
            await self._end(job, "failed", {"status": 500, "message": str(exc)})
        except Exception:
            logger.exception("job=%s failed", job.ref)
            message = f"the job failed; the server log has details under job {job.ref}"
            await self._end(job, "failed", {"status": 500, "message": message})
        finally:
            self.local.jobs.pop(job.id, None)

    async def _end(
        self, job: LocalJob, status: str, error: dict[str, Any] | None = None, result: bytes | None = None
    ) -> None:
        """Write the job's end, unless it has one (a cancel that came first wins)."""

        def end(record: JobRecord) -> JobRecord | None:
            return None if record.finished else record.ended(status, error, len(result or b""))

        await self.local.settle(job)
        try:
            record, changed = await self.store.update(job.id, end, result)
        except JobStoreUnavailable:
            metrics.JOB_STORE_ERRORS.inc()
            logger.error("job=%s ended %s but the job store could not record it", job.ref, status)
            return
        if changed:
            metrics.JOBS.labels(status=status).inc()
            logger.info("job=%s %s%s", job.ref, status, f": {error['message']}" if error else "")
        elif record is not None:
            logger.info("job=%s stopped; it was already %s", job.ref, record.status)

    async def cancel(self, job_id: str) -> JobRecord:
        """Cancel a queued or running job (any replica's); JobFinished (409) when it has already ended."""

        def cancelled(record: JobRecord) -> JobRecord | None:
            return None if record.finished else record.ended("cancelled")

        self._check_id(job_id)
        record, changed = await self.store.update(job_id, cancelled)
        if record is None:
            raise JobNotFound(NOT_FOUND)
        if not changed:
            raise JobFinished(
                f"the job has already {_ended_as(record.status)}; only a queued or running job can be cancelled"
            )
        metrics.JOBS.labels(status="cancelled").inc()
        if not self.local.stop(job_id):
            await self.store.announce_cancel(job_id)
        logger.info("job=%s cancelled", log_ref(job_id))
        return record

    async def forget(self, job_id: str) -> None:
        """Cancel the job if it has not ended, then forget it and its result (OpenAI's delete)."""
        with contextlib.suppress(JobFinished):
            await self.cancel(job_id)
        await self.store.delete(job_id)

    def _check_id(self, job_id: str) -> None:
        if not is_job_id(job_id):  # not even the shape of an id: no store lookup
            raise JobNotFound(NOT_FOUND)

    async def get(self, job_id: str) -> JobRecord:
        """The job; JobNotFound (404) when there is none."""
        self._check_id(job_id)
        record = await self.store.get(job_id)
        if record is None:
            raise JobNotFound(NOT_FOUND)
        return record

    async def result(self, job_id: str) -> bytes | None:
        """The stored predictions (JSON) of a succeeded job."""
        return await self.store.result(job_id)

    async def recent(self, limit: int, api: str | None = None) -> list[JobRecord]:
        """The newest jobs first."""
        return await self.store.recent(limit, api)

    async def events(self, job_id: str) -> AsyncIterator[tuple[str, JobRecord | None]]:
        """The job's events until it ends (see `events.follow`); JobNotFound first when there is no such job."""
        async for event in events.follow(self.store, job_id, self.get):
            yield event


def _ended_as(status: str) -> str:
    return {"succeeded": "succeeded", "failed": "failed", "cancelled": "been cancelled"}[status]


def _too_large(size: int, limit: int) -> str:
    return f"the result ({size} bytes) is more than the job store keeps ({limit} bytes, --max_job_result_bytes)"
