"""The HTTP/gRPC server around the service: KServe's app with our error handlers, middleware, OpenAI routes,
and a SIGTERM that drains before uvicorn stops."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse
from kserve import ModelServer
from kserve.logging import logger
from kserve.model_server import app

from ..api.request import FILE_FIELDS
from ..errors import GenerationFailed, RequestError, ServingError
from ..runtime.service import GenerationService
from .binary_inputs import Base64BinaryInputs
from .disconnect import DisconnectWatcher
from .model import DiffusionModel
from .openai import images as openai_images


async def _generation_failed(_: Request, exc: Exception) -> JSONResponse:
    # KServe's generic handler would prefix the exception's class name; keep the answer short.
    return JSONResponse(status_code=500, content={"error": str(exc)})


async def _request_rejected(_: Request, exc: Exception) -> JSONResponse:
    # KServe's handler logs a traceback for every 400; one line says all there is to say.
    logger.warning("rejected request: %s", exc)
    return JSONResponse(status_code=400, content={"error": str(exc)})


async def _not_served(_: Request, exc: Exception) -> JSONResponse:
    # Queue full, shutting down, deadline, client gone, out of memory: the status and headers say what to do.
    assert isinstance(exc, ServingError)
    return JSONResponse(status_code=exc.http_status, content={"error": exc.message}, headers=exc.headers)


def _drain_on_sigterm(service: GenerationService, grace_seconds: float) -> None:
    """From inside the running server: make SIGTERM drain the model first, then hand over to uvicorn's handler
    (which stops the HTTP server and, through KServe, the gRPC server; the process then exits 0)."""
    loop = asyncio.get_running_loop()
    stop_server = signal.getsignal(signal.SIGTERM)  # uvicorn's, installed when it started serving

    async def drain_then_stop() -> None:
        await service.drain(grace_seconds)
        if callable(stop_server):
            stop_server(signal.SIGTERM, None)

    def on_sigterm() -> None:
        logger.info("SIGTERM: draining before shutdown")
        loop.remove_signal_handler(signal.SIGTERM)  # a second SIGTERM goes straight to uvicorn
        signal.signal(signal.SIGTERM, stop_server)
        asyncio.ensure_future(drain_then_stop())

    loop.add_signal_handler(signal.SIGTERM, on_sigterm)


def serve(service: GenerationService) -> None:
    """Serve the loaded `service` until SIGTERM: KServe v1/v2 REST and gRPC, and the OpenAI routes."""
    config = service.config
    app.add_exception_handler(GenerationFailed, _generation_failed)
    app.add_exception_handler(RequestError, _request_rejected)
    app.add_exception_handler(ServingError, _not_served)
    app.include_router(openai_images.router(service, config.max_image_bytes, config.max_image_pixels))
    app.add_middleware(Base64BinaryInputs, tensors=FILE_FIELDS)
    app.add_middleware(DisconnectWatcher)  # outermost: it buffers the body before the others read it
    serve_lifespan = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(app_: Any) -> AsyncIterator[Any]:
        _drain_on_sigterm(service, config.shutdown_grace_seconds)  # uvicorn's own handler is in place by now
        async with serve_lifespan(app_) as state:
            yield state

    app.router.lifespan_context = lifespan
    ModelServer(**config.model_server).start([DiffusionModel(service)])
