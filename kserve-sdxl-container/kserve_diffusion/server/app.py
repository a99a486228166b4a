"""The HTTP/gRPC server around the service: KServe's ModelServer with our error handlers, middleware, OpenAI
routes, a read-only model repository, limits sized from the settings, and a SIGTERM that drains first."""

from __future__ import annotations

import asyncio
import contextlib
import math
import signal
from collections.abc import AsyncIterator
from typing import Any

from kserve import ModelServer
from kserve import model_server as kserve_model_server
from kserve.constants.constants import MAX_GRPC_MESSAGE_LENGTH
from kserve.logging import logger
from kserve.model_server import app

from ..api.request import FILE_FIELDS
from ..config import ServerConfig
from ..jobs.manager import JobManager
from ..jobs.store import JobStore
from ..runtime.service import GenerationService
from . import capabilities, grpc_errors, handlers, jobs, loras, page, slow_clients
from .auth import ApiKeyGuard, ApiKeys
from .model import DiffusionModel
from .openai import images as openai_images
from .openai import videos as openai_videos
from .repository import ReadOnlyRepository
from .request_body import RequestBodyGuard
from .request_ids import RequestIdHeader
from .v2_binary import V2RequestGuard

MAX_GRPC_BYTES = 2**31 - 1  # gRPC's own ceiling
GRPC_HEADROOM = 1_000_000  # the message's other fields


def grpc_message_limits(config: ServerConfig) -> dict[str, int]:
    """gRPC message sizes that fit this server's largest request and answer (gRPC's default is 8 MB, less than
    four 1024x1024 PNGs): requests up to --max_body_bytes; answers up to --max_num_images images of
    --max_pixels, or a video of --max_video_pixels, as base64 text (typed contents) at worst."""
    image_bytes = config.max_num_images * (config.max_pixels * 3 + GRPC_HEADROOM)
    video_bytes = config.max_video_pixels * 3 // 2  # MP4, GIF or WebP of noise: under 1.5 bytes a pixel
    answer = math.ceil(max(image_bytes, video_bytes) * 4 / 3) + GRPC_HEADROOM
    request = (config.max_body_bytes or 0) + GRPC_HEADROOM
    return {
        "grpc_max_send_message_length": min(answer, MAX_GRPC_BYTES),
        "grpc_max_receive_message_length": min(request, MAX_GRPC_BYTES),
    }


def _size_grpc_messages(config: ServerConfig) -> None:
    # KServe's gRPC server reads its options from kserve.model_server.args; a size the operator set is kept.
    for name, size in grpc_message_limits(config).items():
        if getattr(kserve_model_server.args, name, None) == MAX_GRPC_MESSAGE_LENGTH:
            setattr(kserve_model_server.args, name, max(size, MAX_GRPC_MESSAGE_LENGTH))


def _drain_on_sigterm(service: GenerationService, manager: JobManager, grace_seconds: float) -> None:
    """From inside the running server: make SIGTERM drain the model first, then hand over to uvicorn's handler
    (which stops the HTTP server and, through KServe, the gRPC server; the process then exits 0)."""
    loop = asyncio.get_running_loop()
    stop_server = signal.getsignal(signal.SIGTERM)  # uvicorn's, installed when it started serving

    async def drain_then_stop() -> None:
        await service.drain(grace_seconds)
        await manager.drain()  # every local job has written its end to the store
        if callable(stop_server):
            stop_server(signal.SIGTERM, None)

    def on_sigterm() -> None:
        logger.info("SIGTERM: draining before shutdown")
        loop.remove_signal_handler(signal.SIGTERM)  # a second SIGTERM goes straight to uvicorn
        signal.signal(signal.SIGTERM, stop_server)
        asyncio.ensure_future(drain_then_stop())

    loop.add_signal_handler(signal.SIGTERM, on_sigterm)


def serve(service: GenerationService, store: JobStore) -> None:
    """Serve the loaded `service` until SIGTERM: KServe v1/v2 REST and gRPC, jobs in `store`, and the OpenAI
    routes."""
    config = service.config
    manager = JobManager(service, store, jobs.render_result)
    busy = f"{config.max_concurrent_downloads} results are being downloaded (--max_concurrent_downloads); retry soon"
    downloads = jobs.Slots(config.max_concurrent_downloads, busy)
    owner_header = config.job_owner_header
    app.include_router(jobs.router(manager, config, downloads))
    app.include_router(loras.router(service))
    app.include_router(capabilities.router(service))
    app.include_router(openai_images.router(service, config.max_image_bytes, config.max_image_pixels))
    ttl = config.job_ttl_seconds
    app.include_router(openai_videos.router(manager, ttl, config.max_image_bytes, owner_header, downloads))
    app.add_middleware(V2RequestGuard, files=FILE_FIELDS)
    app.add_middleware(jobs.RespondAsync)
    app.add_middleware(RequestIdHeader)
    if config.playground:
        page.install(app)
    assert config.max_body_bytes is not None  # resolved by parse_config
    # Outermost: bounds and buffers the body before anything else reads it.
    app.add_middleware(RequestBodyGuard, max_bytes=config.max_body_bytes, timeout=config.body_timeout)
    keys = ApiKeys(config.api_key_values)
    app.add_middleware(ApiKeyGuard, keys=keys)  # before the body guard: no body is read for a caller without a key
    app.add_middleware(handlers.LastWord)  # outermost: answers and logs once whatever escaped the rest
    if keys.required:
        logger.info(
            "API keys: %d configured; every route but health, readiness and /metrics asks for one",
            len(config.api_key_values),
        )
    slow_clients.install(config.header_timeout)
    grpc_errors.install(keys)
    _size_grpc_messages(config)
    serve_lifespan = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(app_: Any) -> AsyncIterator[Any]:
        handlers.install(app, service.name)  # after KServe's own handlers, which it adds when it starts
        handlers.quiet_request_logs()
        _drain_on_sigterm(service, manager, config.shutdown_grace_seconds)  # uvicorn's handler is in place by now
        await manager.start()
        try:
            async with serve_lifespan(app_) as state:
                yield state
        finally:
            await manager.close()

    app.router.lifespan_context = lifespan
    server = ModelServer(**config.model_server)
    server.model_repository_extension = ReadOnlyRepository(server.model_repository_extension, service.name)
    server.start([DiffusionModel(service)])
