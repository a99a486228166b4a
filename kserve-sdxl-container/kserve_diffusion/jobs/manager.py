"""Jobs: a generation submitted now and fetched later, seen from every replica.

A submission goes through the same checks as a synchronous request (validation, room in the queue,
input images) before it becomes a job, so a bad request is a 400 then, never a job that fails later; a
seed is chosen then when the request gave none. With the memory store the job runs on this replica's
accelerator queue. With a shared queue (Redis) it is appended to the queue every replica takes from when
its accelerator is free (taker.py), with its requests and pictures, so any replica can run it, and run it
again if the one running it dies. Its status, progress, result and error go to the store, where any replica
reads them; every write of the replica running it is fenced by its try (`attempt`), so a replica that lost
the job cannot overwrite it. A cancel is written to the store and, when another replica runs the job,
announced to it; the job stops at its next denoising step or never runs. Jobs do not depend on the
submitting connection: a client that leaves does not cancel its job.
It is one module because submitting, running, ending, handing back and cancelling a job share the fencing
rule and the order of writes to the store and the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson

from ..api.request import GenerationRequest
from ..api.results import GenerationResult
from ..errors import (
    GenerationFailed,
    JobCancelled,
    JobFinished,
    JobNotFound,
    JobStoreLost,
    JobStoreUnavailable,
    JobTakenOver,
    RequestError,
    ServingError,
    ShuttingDown,
)
from ..outputs.delivery import holds_objects, object_keys
from ..runtime import metrics
from ..runtime.service import GenerationService, Prepared
from . import events, payload
from .local import LocalJob, LocalJobs, planned_steps
from .records import JobRecord, is_job_id, log_ref, new_job_id
from .redis_queue import REDIS_ERRORS, Entry
from .store import JobStore, Page, StoredResult, Stream
from .taker import QueueTaker

logger = logging.getLogger("kserve.diffusion")
Render = Callable[[list[GenerationResult], str], StoredResult]  # a job's results (and its api) as stored
END_RETRY_FIRST = 0.5  # seconds before the first retry of a job's end; doubled each time, up to END_RETRY_MOST
END_RETRY_MOST = 10.0
END_RETRY_AT_LEAST = 60.0  # a job that ends at its deadline still gets this long to record its end
RESUBMIT = "the server shut down before the job finished; submit it again (another replica will run it)"
NOT_FOUND = "no job with this id here (ids come from a submission; finished jobs are forgotten after a while)"


class JobManager:
    """Submits, runs, cancels and shows the jobs of one served model."""

    def __init__(self, service: GenerationService, store: JobStore, render: Render) -> None:
        self.service = service
        self.store = store
        self.render = render
        self.replica = replica_name(service.config.pod_name)
        self.local = LocalJobs(store, service.worker, self.replica)
        self._background: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Connect the store; listen for cancels from other replicas; keep queue positions fresh; take jobs
        from the shared queue when there is one."""
        await self.store.start()
        self._background = [
            asyncio.create_task(self.local.listen_for_cancels()),
            asyncio.create_task(self.local.refresh_positions()),
        ]
        if self.store.queue is not None:
            self._background.append(asyncio.create_task(QueueTaker(self, self.store.queue).run()))

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
        owner: str | None = None,
    ) -> JobRecord:
        """Check the request as a synchronous one would be, then keep it as a job of `owner`: in the shared queue
        when there is one, else in this replica's queue, whose place it holds until it ends; the job's first
        record. `describe` gives what an API shows of the checked requests (kept in the record's `extra`)."""
        shared = self.store.queue is not None
        checked = await self.service.prepare(instances, local_room=not shared)
        prepared = [payload.with_seed(item) for item in checked]
        record = JobRecord(
            id=new_job_id(),
            model=self.service.name,
            created_at=time.time(),
            total_steps=sum(planned_steps(item.request) for item in prepared),
            api=api,
            owner=owner,
            extra=describe([item.request for item in prepared]) if describe else {},
        )
        if shared:
            return await self._enqueue(record, prepared, request_id)
        worker = self.service.worker
        waiting_ahead = worker.waiting
        reservation = worker.reserve()  # ServerBusy (503) now, never a job that fails later for a full queue
        eta = self.local.queued_eta(waiting_ahead)
        record = record.replace(queue_position=waiting_ahead, eta_seconds=eta, attempt=1, replica=self.replica)
        try:
            await self.store.create(record)
        except BaseException:
            reservation.release()
            raise
        job = LocalJob(
            record.id,
            prepared,
            [self.service.control(item.request, request_id) for item in prepared],  # deadlines from submission
            waiting_ahead=waiting_ahead,
            dequeued_at_submission=worker.dequeued,
            position=waiting_ahead,
            reservation=reservation,
        )
        self.local.jobs[job.id] = job
        job.task = asyncio.create_task(self._run(job, api))
        metrics.JOBS.labels(status="queued").inc()
        logger.info("request=%s job=%s submitted (%d instance(s))", request_id, job.ref, len(prepared))
        return record

    async def _enqueue(self, record: JobRecord, prepared: list[Prepared], request_id: str) -> JobRecord:
        """Keep the job and its requests, and append it to the shared queue (one step in the store)."""
        requests = await asyncio.get_running_loop().run_in_executor(None, payload.encode, prepared)
        await self.store.create(record, requests)
        metrics.JOBS.labels(status="queued").inc()
        logger.info("request=%s job=%s queued (%d instance(s))", request_id, log_ref(record.id), len(prepared))
        return await self._with_place(record)

    def run_taken(self, record: JobRecord, items: list[Prepared], held: Entry) -> LocalJob:
        """Run a job this replica took from the shared queue (its try `record.attempt`); its task ends with it."""
        worker = self.service.worker
        job = LocalJob(
            record.id,
            items,
            [self.service.control(item.request, f"{record.id[:12]}-{record.attempt}") for item in items],
            waiting_ahead=0,
            dequeued_at_submission=worker.dequeued,
            position=0,
            reservation=worker.reserve(),
            attempt=record.attempt,
            held=held,
        )
        self.local.jobs[job.id] = job
        job.task = asyncio.create_task(self._run(job, record.api))
        return job

    async def _run(self, job: LocalJob, api: str) -> None:
        results: list[GenerationResult] = []
        try:
            for index, (item, control) in enumerate(zip(job.items, job.controls, strict=True)):
                self.local.watch_worker(job, control, first=index == 0)
                if index:
                    job.reservation.hold_again()
                note = f" job={job.ref}"
                # With an output store a job keeps object keys, not files: {job id}/{index}, counted across instances.
                upload = (job.id, sum(len(r.files) for r in results)) if self.service.outputs is not None else None
                results.append(await self.service.run(item, control, job.stop, note, job.reservation, upload))
                job.steps_done += control.steps
            job.reservation.release()
            stored = await asyncio.get_running_loop().run_in_executor(None, self.render, results, api)
            limit = self.store.max_result_bytes
            if limit is not None and stored.size > limit:
                await self._end(job, "failed", {"status": 507, "message": _too_large(stored.size, limit)})
            else:
                await self._end(job, "succeeded", result=stored)
        except (JobStoreLost, JobTakenOver):
            return  # logged where it was found: there is no record left to write, or it is another try's now
        except JobCancelled:
            await self._end(job, "cancelled")
        except ShuttingDown:
            if job.held is not None:
                await self._hand_back(job)
            else:
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
            job.reservation.release()
            self.local.jobs.pop(job.id, None)

    async def _end(
        self, job: LocalJob, status: str, error: dict[str, Any] | None = None, result: StoredResult | None = None
    ) -> None:
        """Write the job's end (with room made for its result, or a 507 when none can be), unless it has one (a
        cancel that came first wins); retried with backoff while the store is unavailable, until the job's
        deadline (at least END_RETRY_AT_LEAST seconds)."""

        def ending(record: JobRecord) -> JobRecord | None:
            return None if record.finished else record.ended(status, error, result.size if result else 0)

        end = self.local.fenced(job, ending)

        await self.local.settle(job)
        give_up = time.monotonic() + max(job.controls[0].remaining(), END_RETRY_AT_LEAST)
        delay = END_RETRY_FIRST
        while True:
            try:
                if result is not None and not await self.store.room_for(result.size):
                    status, error, result = "failed", {"status": 507, "message": _no_room(result.size)}, None
                record, changed = await self.store.update(job.id, end, result)
                break
            except JobStoreUnavailable as exc:
                metrics.JOB_STORE_ERRORS.inc()
                if time.monotonic() + delay > give_up:
                    logger.error("job=%s ended %s but the job store could not record it: %s", job.ref, status, exc)
                    return
                if delay == END_RETRY_FIRST:
                    logger.warning("job=%s ended %s; the job store cannot record it yet, retrying", job.ref, status)
                metrics.JOB_END_RETRIES.inc()
                await asyncio.sleep(delay)
                delay = min(delay * 2, END_RETRY_MOST)
        if record is None:
            self.local.lose(job)
            return
        if not record.held_by(self.replica, job.attempt):
            self.local.taken_by_another(job)
            return
        if changed:
            metrics.JOBS.labels(status=status).inc()
            logger.info("job=%s %s%s", job.ref, status, f": {error['message']}" if error else "")
        else:
            logger.info("job=%s stopped; it was already %s", job.ref, record.status)
        if job.held is not None and self.store.queue is not None:
            with contextlib.suppress(Exception):  # an entry left behind is found ended by the next taker
                await self.store.queue.remove(job.id)

    async def _hand_back(self, job: LocalJob) -> None:
        """Shutting down with a shared-queue job running: its record says queued again, and its entry goes
        back to the queue's front, so another replica runs it (not a failure: its try is not counted)."""

        def queued_again(record: JobRecord) -> JobRecord | None:
            if record.finished:
                return None
            fresh = {"step": 0, "step_at": None, "started_at": None, "eta_seconds": None}
            return record.replace(status="queued", replica=None, queue_position=0, **fresh)

        assert job.held is not None and self.store.queue is not None
        await self.local.settle(job)
        try:
            _, changed = await self.store.update(job.id, self.local.fenced(job, queued_again))
            if changed:
                await self.store.queue.hand_back(job.held, self.replica)
                metrics.JOBS_HANDED_BACK.inc()
                logger.info("job=%s handed back to the shared queue (shutting down)", job.ref)
        except (JobStoreUnavailable, *REDIS_ERRORS) as exc:
            # Not written: its lease lapses instead, and another replica takes it then.
            reason = type(exc).__name__
            logger.warning("job=%s not handed back (%s): another replica takes it after its lease", job.ref, reason)

    async def cancel(self, job_id: str, caller: str | None) -> JobRecord:
        """Cancel `caller`'s queued or running job (any replica's); JobNotFound (404) for another owner's,
        JobFinished (409) when it has already ended."""

        def cancelled(record: JobRecord) -> JobRecord | None:
            return None if record.finished or not record.visible_to(caller) else record.ended("cancelled")

        self._check_id(job_id)
        record, changed = await self.store.update(job_id, cancelled)
        if record is None or not record.visible_to(caller):
            raise JobNotFound(NOT_FOUND)
        if not changed:
            raise JobFinished(
                f"the job has already {_ended_as(record.status)}; only a queued or running job can be cancelled"
            )
        metrics.JOBS.labels(status="cancelled").inc()
        if self.store.queue is not None and record.replica is None:
            with contextlib.suppress(Exception):  # left behind, it is found cancelled and dropped by a taker
                await self.store.queue.remove(job_id)  # queued: out of the shared queue, it never runs
        elif not self.local.stop(job_id):
            await self.store.announce_cancel(job_id)
        logger.info("job=%s cancelled", log_ref(job_id))
        return record

    async def forget(self, job_id: str, caller: str | None) -> None:
        """Cancel `caller`'s job if it has not ended, then forget it and its result (OpenAI's delete)."""
        with contextlib.suppress(JobFinished):
            await self.cancel(job_id, caller)
        keys = await self.stored_object_keys(job_id)
        await self.store.delete(job_id)
        if keys and self.service.outputs is not None:
            await self.service.outputs.delete(keys)  # its URLs stop working too

    async def stored_object_keys(self, job_id: str) -> list[str]:
        """The output store keys a finished job's stored predictions name (none without an output store, or when
        the job kept its files itself)."""
        outputs = self.service.outputs
        stored = await self.store.result(job_id) if outputs is not None else None
        if outputs is None or stored is None or not holds_objects(stored):
            return []
        return object_keys(orjson.loads(stored), outputs)

    def _check_id(self, job_id: str) -> None:
        if not is_job_id(job_id):  # not even the shape of an id: no store lookup
            raise JobNotFound(NOT_FOUND)

    async def get(self, job_id: str, caller: str | None) -> JobRecord:
        """The job as `caller` may see it; JobNotFound (404) when there is none, or it is another owner's (the
        same answer: nobody learns that an id exists)."""
        self._check_id(job_id)
        record = await self.store.get(job_id)
        if record is None or not record.visible_to(caller):
            raise JobNotFound(NOT_FOUND)
        return await self._with_place(record)

    async def _with_place(self, record: JobRecord) -> JobRecord:
        """A job still in the shared queue with its place there and an estimate from every replica's recent
        speed (read, not stored: the queue moves without touching the record)."""
        queue = self.store.queue
        if queue is None or record.status != "queued" or record.replica is not None:
            return record
        try:
            position = await queue.position(record.id)
            replicas, mean = await queue.speed()
        except REDIS_ERRORS:
            return record
        if position is None:
            return record
        eta = round(math.ceil((position + 1) / max(replicas, 1)) * mean, 1) if mean is not None else None
        return record.replace(queue_position=position, eta_seconds=eta)

    async def read(self, job_id: str, part: str = "result") -> Stream | None:
        """A succeeded job's stored part in chunks (check the caller with `get` first)."""
        return await self.store.read(job_id, part)

    async def recent(
        self, caller: str | None, api: str, limit: int, after: str | None = None, ascending: bool = False
    ) -> Page:
        """`caller`'s jobs made through `api`, newest first; nothing for a caller without an identity."""
        if caller is None:
            return Page([], False)
        return await self.store.recent(caller, api, limit, after, ascending)

    async def events(self, job_id: str, caller: str | None) -> AsyncIterator[tuple[str, JobRecord | None]]:
        """The job's events until it ends (see `events.follow`); JobNotFound first when there is no such job."""

        async def get(wanted: str) -> JobRecord:
            return await self.get(wanted, caller)

        async for event in events.follow(self.store, job_id, get):
            yield event


def replica_name(pod_name: str | None) -> str:
    """This replica in job records and the queue: the pod's name (POD_NAME), else hostname:pid."""
    return pod_name or f"{socket.gethostname()}:{os.getpid()}"


def _ended_as(status: str) -> str:
    return {"succeeded": "succeeded", "failed": "failed", "cancelled": "been cancelled"}[status]


def _no_room(size: int) -> str:
    return f"the job store has no room for the result ({size} bytes) now (--max_job_result_bytes); submit it again"


def _too_large(size: int, limit: int) -> str:
    return f"the result ({size} bytes) is more than the job store keeps ({limit} bytes, --max_job_result_bytes)"
