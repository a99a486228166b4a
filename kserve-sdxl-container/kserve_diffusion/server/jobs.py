"""The job routes: `/v1/models/{name}/jobs` (submit, list), `/jobs/{id}` (read, cancel), `/jobs/{id}/events`
(Server-Sent Events), and `Prefer: respond-async` on `:predict`, which is a submission by another path.

The bodies are v1's: a submission takes what `:predict` takes, and a succeeded job holds exactly the
`predictions` that `:predict` would have answered.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any, TypeVar

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response, StreamingResponse
from kserve.errors import ModelNotFound, ModelNotReady

from ..api.schema import instances_body
from ..config import ServerConfig
from ..errors import ServerBusy, ServingError
from ..jobs.manager import JobManager
from ..jobs.records import JobRecord
from ..jobs.store import StoredResult, Stream
from ..outputs.delivery import holds_objects, resolve
from ..outputs.s3 import OutputStore
from ..redact import request_id
from . import v1
from .auth import caller_identity

Scope = dict[str, Any]
Opened = TypeVar("Opened")  # a stored part, or an object of the output store: a size and chunks
MAX_EVENTS_PER_STREAM = 10_000  # then the stream ends, asking the client to reconnect (bounds one stream's work)
LIST_LIMIT = 100


def _link(operation: str) -> dict[str, Any]:
    """An OpenAPI link from a submission to `operation` on the same job (clients and `make fuzz` follow them)."""
    return {
        "operationId": operation,
        "parameters": {"model_name": "$request.path.model_name", "job_id": "$response.body#/id"},
    }


SUBMITTED = {
    202: {
        "description": "the job, queued; its id is in `id` and its route in `Location`",
        "links": {"ReadJob": _link("read_job"), "CancelJob": _link("cancel_job"), "JobEvents": _link("job_events")},
    }
}


class Slots:
    """At most `limit` of something at once (event streams, downloads), counted when admitted, not when the
    response starts: a burst of connections cannot all slip in before the first one counts."""

    def __init__(self, limit: int, busy: str) -> None:
        self.limit = limit
        self.busy = busy
        self.taken = 0

    def take(self) -> Callable[[], None]:
        """Take a slot (ServerBusy when none is free); returns its release, to call exactly once."""
        if self.taken >= self.limit:
            raise ServerBusy(self.busy, 5)
        self.taken += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.taken -= 1

        return release


async def open_download(
    downloads: Slots, read: Callable[[], Awaitable[Opened | None]]
) -> tuple[Opened, Callable[[], None]] | None:
    """A stored part opened under a download slot (ServerBusy when none is free): (its stream, the slot's
    release); None, with the slot given back, when the part is gone."""
    release = downloads.take()
    try:
        stored = await read()
    except BaseException:
        release()
        raise
    if stored is None:
        release()
        return None
    return stored, release


class SlotResponse(StreamingResponse):
    """A streamed answer that gives its slot back when it ends, however it ends (client gone included)."""

    def __init__(self, content: AsyncIterator[Any], release: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self.release = release

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        """Send the stream, then release the slot."""
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.release()


def _json(content: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(content), status, headers, media_type="application/json")


async def job_json(record: JobRecord, predictions: Stream) -> AsyncIterator[bytes]:
    """The job as JSON, with the stored predictions streamed in as they are (a video is megabytes of JSON that
    need not be parsed again, nor copied whole per reader)."""
    yield orjson.dumps(record.view())[:-1] + b',"predictions":'
    async for chunk in predictions.chunks:
        yield chunk
    yield b"}"


async def resolved(stored: Stream, outputs: OutputStore | None) -> Stream:
    """A succeeded job's stored predictions as its reader gets them: as stored (streamed), or, where they name
    files in the output store, with fresh presigned URLs or the files read back as data URLs."""
    if outputs is None:
        return stored
    data = b"".join([chunk async for chunk in stored.chunks])  # small: the files are in the store
    if holds_objects(data):
        data = orjson.dumps(await resolve(orjson.loads(data), outputs))

    async def one() -> AsyncIterator[bytes]:
        yield data

    return Stream(len(data), one())


def render_result(results: list[Any], api: str) -> StoredResult:
    """What a job stores: the `predictions` list of v1's answer as JSON and, for the Videos API, the video file
    itself (served as it is by /content). Files uploaded to the output store are kept as their s3:// URIs only."""
    predictions = orjson.dumps(v1.stored_predictions(results))
    video = results[0] if api == "openai" and results and results[0].video is not None else None
    content = video.files[0] if video is not None and not video.objects else None
    return StoredResult(predictions, content)


def wants_async(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether a Prefer header (RFC 7240) asks for respond-async."""
    for key, value in headers:
        if key.lower() == b"prefer":
            for preference in value.decode("latin-1").split(","):
                if preference.split(";")[0].split("=")[0].strip().lower() == "respond-async":
                    return True
    return False


class RespondAsync:
    """ASGI middleware: `POST /v1/models/{name}:predict` with `Prefer: respond-async` goes to the job
    submission route instead (202 and a job), with all of that route's checks and answers."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if (
            scope["type"] == "http"
            and scope["method"] == "POST"
            and path.startswith("/v1/models/")
            and path.endswith(":predict")
            and wants_async(scope.get("headers") or [])
        ):
            jobs_path = path[: -len(":predict")] + "/jobs"
            scope = {**scope, "path": jobs_path, "raw_path": jobs_path.encode()}
        await self.app(scope, receive, send)


def router(jobs: JobManager, config: ServerConfig, downloads: Slots) -> APIRouter:
    """The job routes for the served model: each caller (server/auth.py) sees only its own jobs; at most
    `downloads` results and --max_event_streams event streams at once."""
    api = APIRouter(prefix="/v1/models/{model_name}/jobs", tags=["Jobs"])
    served = jobs.service.name
    max_instances, owner_header, most = config.max_instances, config.job_owner_header, config.max_event_streams
    streams = Slots(most, f"too many event streams are open ({most}, --max_event_streams); poll the job instead")

    def caller(request: Request) -> str | None:
        return caller_identity(request.headers, owner_header)

    def check_model(model_name: str) -> None:
        if model_name != served:
            raise ModelNotFound(model_name)

    @api.post(
        "",
        status_code=202,
        summary="Submit a generation as a job (the :predict body)",
        operation_id="submit_job",
        responses=SUBMITTED,
        openapi_extra=instances_body(jobs.service.limits, max_instances),
    )
    async def submit(model_name: str, request: Request) -> Response:
        check_model(model_name)
        if not jobs.service.ready:
            raise ModelNotReady(model_name)
        instances = v1.read_instances(await request.body(), max_instances)
        record = await jobs.submit(instances, request_id(request.headers.get("x-request-id")), owner=caller(request))
        headers = {"Location": f"/v1/models/{served}/jobs/{record.id}"}
        if wants_async(request.headers.raw):
            headers["Preference-Applied"] = "respond-async"
        return _json(record.view(), 202, headers)

    @api.get("", summary="The caller's recent jobs, newest first", operation_id="list_jobs")
    async def recent(
        model_name: str,
        request: Request,
        limit: Annotated[int, Query(ge=1, le=LIST_LIMIT, description="how many")] = 20,
    ) -> Response:
        check_model(model_name)
        page = await jobs.recent(caller(request), "kserve", limit)
        shown = [{"id": r.id, "status": r.status, "created_at": r.created_at} for r in page.records]
        return _json({"jobs": shown})

    @api.get(
        "/{job_id}", summary="A job: status, progress and, once succeeded, its predictions", operation_id="read_job"
    )
    async def read(model_name: str, job_id: str, request: Request) -> Response:
        check_model(model_name)
        record = await jobs.get(job_id, caller(request))
        outputs = jobs.service.outputs

        async def read_result() -> Stream | None:
            stored = await jobs.read(job_id)
            return None if stored is None else await resolved(stored, outputs)

        opened = await open_download(downloads, read_result) if record.status == "succeeded" else None
        if opened is None:  # not succeeded (or forgotten between the two reads): the job alone
            return _json(record.view())
        stored, release = opened
        return SlotResponse(job_json(record, stored), release, media_type="application/json")

    @api.delete("/{job_id}", summary="Cancel a queued or running job", operation_id="cancel_job")
    async def cancel(model_name: str, job_id: str, request: Request) -> Response:
        check_model(model_name)
        return _json((await jobs.cancel(job_id, caller(request))).view())

    @api.get(
        "/{job_id}/events", summary="The job's changes as Server-Sent Events, until it ends", operation_id="job_events"
    )
    async def events(model_name: str, job_id: str, request: Request) -> StreamingResponse:
        check_model(model_name)
        who = caller(request)
        await jobs.get(job_id, who)  # a 404 before the stream starts
        release = streams.take()

        async def stream() -> Any:
            sent = 0
            try:
                async with contextlib.aclosing(jobs.events(job_id, who)) as changes:
                    async for name, record in changes:
                        if record is None:
                            yield b": keep-alive\n\n"
                        else:
                            yield b"event: " + name.encode() + b"\ndata: " + orjson.dumps(record.view()) + b"\n\n"
                        sent += 1
                        if sent >= MAX_EVENTS_PER_STREAM:
                            message = (
                                f"this stream has sent its {MAX_EVENTS_PER_STREAM} events; reconnect to follow the job"
                            )
                            yield b"event: error\ndata: " + orjson.dumps({"error": message}) + b"\n\n"
                            return
            except ServingError as exc:  # the store went away, or the job was forgotten (deleted) meanwhile
                yield b"event: error\ndata: " + orjson.dumps({"error": exc.message}) + b"\n\n"

        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return SlotResponse(stream(), release, media_type="text/event-stream", headers=headers)

    return api
