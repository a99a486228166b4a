"""GET /v1/models/{name}/capabilities: what the served model can do (runtime/capabilities.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from kserve.errors import ModelNotFound

from ..runtime.capabilities import describe
from ..runtime.service import GenerationService

PLAYGROUND = Path(__file__).with_name("playground")


def router(service: GenerationService) -> APIRouter:
    """The capabilities route of the served model."""
    api = APIRouter(tags=["Capabilities"])

    @api.get("/v1/models/{model_name}/capabilities", summary="tasks, defaults, schedulers, limits, adapters")
    async def capabilities(model_name: str) -> JSONResponse:
        if model_name != service.name:
            raise ModelNotFound(model_name)
        # The adapters' listing reads file headers: off the event loop.
        return JSONResponse(await asyncio.get_running_loop().run_in_executor(None, describe, service))

    @api.get("/playground", include_in_schema=False)
    async def playground_root() -> RedirectResponse:
        return RedirectResponse("playground/")

    return api


def mount_playground(app: FastAPI) -> None:
    """The playground's static files at /playground/ (shipped in the package: no build, nothing fetched)."""
    app.mount("/playground/", StaticFiles(directory=PLAYGROUND, html=True), name="playground")
