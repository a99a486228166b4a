"""How failures become answers on the REST side: one short JSON error and one log line each.

Client errors (400, 404, 503 not ready) are one warning line, never a traceback, and echo at most a
capped, escaped piece of what the client sent. Only a failure of the server itself logs a traceback,
and its answer names no Python exception class. KServe installs its own handlers when it starts, so
`install` runs from the lifespan, after KServe's, and wins.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from kserve.errors import InvalidInput, ModelNotFound, ModelNotReady
from kserve.logging import logger

from ..api.messages import quoted, shown
from ..errors import GenerationFailed, ServingError
from ..redact import loggable, request_id, strip_query, without_job_ids

MAX_MESSAGE_CHARS = 500  # a client-caused message longer than this is cut


def _capped(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE_CHARS else text[: MAX_MESSAGE_CHARS - 3] + "..."


def _client_error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    message = _capped(message)
    logger.warning("rejected request (%d): %s", status, message)
    return JSONResponse(status_code=status, content={"error": message}, headers=headers)


async def _bad_input(_: Request, exc: Exception) -> JSONResponse:
    # Our RequestError and KServe's InvalidInput (malformed JSON, missing data, ...).
    return _client_error(400, str(exc))


async def _validation_failed(_: Request, exc: Exception) -> JSONResponse:
    # FastAPI's body validation of KServe's routes (e.g. a v2 body whose "inputs" is not a list).
    assert isinstance(exc, RequestValidationError)
    problems = []
    for error in exc.errors()[:5]:
        loc = [str(part) for part in error.get("loc", ()) if part != "body"]
        if loc[:1] == ["bytes"]:  # KServe's v2 body is `InferenceRequest | bytes`: the bytes branch says nothing
            continue
        where = ".".join(loc[1:] if loc[:1] == ["InferenceRequest"] else loc) or "body"
        problems.append(f"{shown(where)[1:-1]}: {error.get('msg', 'invalid')}, got {shown(error.get('input'))}")
    return _client_error(400, "; ".join(problems) or "the request body is not valid")


def _model_not_found(served: str) -> Any:
    async def answer(request: Request, _: Exception) -> JSONResponse:
        asked = request.path_params.get("model_name", "")
        return _client_error(404, f"model {quoted(asked)} is not served here; this server serves {served!r}")

    return answer


async def _not_ready(request: Request, _: Exception) -> JSONResponse:
    return _client_error(503, "the model is not ready (loading or shutting down); retry, or use another replica")


async def _not_implemented(request: Request, exc: Exception) -> JSONResponse:
    # KServe raises it for a `model_version` (this server serves one version): the client can leave it out.
    if "versioning" in str(exc).lower() or "/versions/" in request.url.path:
        return _client_error(400, f"model_version: versions are not supported; leave it out ({exc})")
    return _client_error(
        400, f"{strip_query(request.url.path)[:100]}: not supported by this server ({exc or 'no detail'})"
    )


async def _not_served(_: Request, exc: Exception) -> JSONResponse:
    # Queue full, shutting down, deadline, client gone, out of memory, repository refused: status and headers say
    # what to do.
    assert isinstance(exc, ServingError)
    if exc.http_status >= 500:
        logger.warning("not served (%d): %s", exc.http_status, exc.message)
        return JSONResponse(status_code=exc.http_status, content={"error": exc.message}, headers=exc.headers)
    return _client_error(exc.http_status, exc.message, exc.headers)


async def _generation_failed(_: Request, exc: Exception) -> JSONResponse:
    # Logged with its traceback where it happened; the answer is short and names the request id.
    return JSONResponse(status_code=500, content={"error": str(exc)})


class LastWord:
    """ASGI middleware, outermost: an exception that escaped every handler is answered here with one short 500
    (OpenAI's error shape on /openai routes) and ONE log record with its traceback, and not raised again.
    Starlette's own last handler re-raises after answering, so uvicorn logged a second traceback and dropped
    the keep-alive connection."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: dict[str, Any]) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as exc:
            given = next((v.decode("latin-1") for k, v in scope.get("headers") or [] if k == b"x-request-id"), None)
            rid = request_id(given)
            path = loggable(strip_query(scope.get("path", "")), MAX_PATH_CHARS)
            logger.error("request=%s %s %s failed", rid, scope.get("method"), path, exc_info=exc)
            if started:  # the answer was under way: the connection ends, nothing more can be said
                return
            message = f"internal error; the server log has details under request id {rid}"
            body: dict[str, Any] = {"error": message}
            if scope.get("path", "").startswith("/openai/"):
                body = {"error": {"message": message, "type": "server_error", "param": None, "code": None}}
            headers = [(b"content-type", b"application/json"), (b"x-request-id", rid.encode())]
            await send({"type": "http.response.start", "status": 500, "headers": headers})
            await send({"type": "http.response.body", "body": json.dumps(body).encode()})


def install(app: FastAPI, served_model: str) -> None:
    """Put our handlers in place (after KServe's own) and make the app rebuild its handler table."""
    handlers = {
        InvalidInput: _bad_input,  # RequestError is one too
        RequestValidationError: _validation_failed,
        ModelNotFound: _model_not_found(served_model),
        ModelNotReady: _not_ready,
        NotImplementedError: _not_implemented,
        ServingError: _not_served,
        GenerationFailed: _generation_failed,
    }  # any other exception: LastWord
    for exception, handler in handlers.items():
        app.add_exception_handler(exception, handler)
    app.middleware_stack = None  # Starlette copies the handlers when it builds the stack: rebuild on next request


MAX_PATH_CHARS = 200  # a logged request path is cut here: a 60 KB path must not make a 60 KB log line


def quiet_request_logs() -> None:
    """Access and timing log lines without query strings (pre-signed URLs and tokens travel there), with
    request paths capped."""
    logging.getLogger("uvicorn.access").addFilter(_access_filter)
    logging.getLogger("kserve.trace").addFilter(_capped_filter)


def _access_filter(record: logging.LogRecord) -> bool:
    # uvicorn's access record: (client address, method, path with query, HTTP version, status).
    if isinstance(record.args, tuple) and len(record.args) >= 3 and isinstance(record.args[2], str):
        path = without_job_ids(strip_query(record.args[2]))
        record.args = (*record.args[:2], loggable(path, MAX_PATH_CHARS), *record.args[3:])
    return True


def _capped_filter(record: logging.LogRecord) -> bool:
    # KServe's timing lines name the metric after the path.
    message = record.getMessage()
    redacted = without_job_ids(message)
    if len(redacted) > 2 * MAX_PATH_CHARS or redacted != message:
        record.msg, record.args = loggable(redacted, 2 * MAX_PATH_CHARS), ()
    return True
