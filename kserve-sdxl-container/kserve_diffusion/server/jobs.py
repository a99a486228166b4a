"""The job routes: `/v1/models/{name}/jobs` (submit, list), `/jobs/{id}` (read, cancel), `/jobs/{id}/events`
(Server-Sent Events), and `Prefer: respond-async` on `:predict`, which is a submission by another path.

The bodies are v1's: a submission takes what `:predict` takes, and a succeeded job holds exactly the
`predictions` that `:predict` would have answered.
"""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response, StreamingResponse
from kserve.errors import ModelNotFound, ModelNotReady

from ..errors import ServerBusy, ServingError
from ..jobs.manager import JobManager
from ..jobs.records import JobRecord
from ..redact import request_id
from . import v1

Scope = dict[str, Any]
MAX_EVENT_STREAMS = 256  # open SSE streams per replica; more are a 503 (each holds a connection)
LIST_LIMIT = 100


def _json(content: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(content), status, headers, media_type="application/json")


def job_json(record: JobRecord, predictions: bytes | None) -> bytes:
    """The job as JSON, with the stored predictions spliced in as they are (a video is megabytes of JSON
    that need not be parsed again)."""
    shown = orjson.dumps(record.view())
    if predictions is None:
        return shown
    return shown[:-1] + b',"predictions":' + predictions + b"}"


def render_predictions(results: list[Any]) -> bytes:
    """What a job stores: the `predictions` list of v1's answer, as JSON."""
    return orjson.dumps(v1.build_response(results)["predictions"])


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


def router(jobs: JobManager, max_instances: int) -> APIRouter:
    """The job routes for the served model."""
    api = APIRouter(prefix="/v1/models/{model_name}/jobs", tags=["Jobs"])
    served = jobs.service.name
    streams = {"open": 0}

    def check_model(model_name: str) -> None:
        if model_name != served:
            raise ModelNotFound(model_name)

    @api.post("", status_code=202, summary="Submit a generation as a job (the :predict body)")
    async def submit(model_name: str, request: Request) -> Response:
        check_model(model_name)
        if not jobs.service.ready:
            raise ModelNotReady(model_name)
        instances = v1.read_instances(await request.body(), max_instances)
        record = await jobs.submit(instances, request_id(request.headers.get("x-request-id")))
        headers = {"Location": f"/v1/models/{served}/jobs/{record.id}"}
        if wants_async(request.headers.raw):
            headers["Preference-Applied"] = "respond-async"
        return _json(record.view(), 202, headers)

    @api.get("", summary="Recent jobs, newest first")
    async def recent(
        model_name: str, limit: Annotated[int, Query(ge=1, le=LIST_LIMIT, description="how many")] = 20
    ) -> Response:
        check_model(model_name)
        records = await jobs.recent(limit)
        shown = [{"id": r.id, "status": r.status, "created_at": r.created_at} for r in records]
        return _json({"jobs": shown})

    @api.get("/{job_id}", summary="A job: status, progress and, once succeeded, its predictions")
    async def read(model_name: str, job_id: str) -> Response:
        check_model(model_name)
        record = await jobs.get(job_id)
        predictions = await jobs.result(job_id) if record.status == "succeeded" else None
        return Response(job_json(record, predictions), media_type="application/json")

    @api.delete("/{job_id}", summary="Cancel a queued or running job")
    async def cancel(model_name: str, job_id: str) -> Response:
        check_model(model_name)
        return _json((await jobs.cancel(job_id)).view())

    @api.get("/{job_id}/events", summary="The job's changes as Server-Sent Events, until it ends")
    async def events(model_name: str, job_id: str) -> StreamingResponse:
        check_model(model_name)
        await jobs.get(job_id)  # a 404 before the stream starts
        if streams["open"] >= MAX_EVENT_STREAMS:
            raise ServerBusy(f"too many event streams are open ({MAX_EVENT_STREAMS}); poll the job instead", 5)

        async def stream() -> Any:
            streams["open"] += 1
            try:
                async for name, record in jobs.events(job_id):
                    if record is None:
                        yield b": keep-alive\n\n"
                    else:
                        yield b"event: " + name.encode() + b"\ndata: " + orjson.dumps(record.view()) + b"\n\n"
            except ServingError as exc:  # the store went away, or the job was forgotten (deleted) meanwhile
                yield b"event: error\ndata: " + orjson.dumps({"error": exc.message}) + b"\n\n"
            finally:
                streams["open"] -= 1

        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)

    return api
