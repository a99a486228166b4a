"""GET /v1/models/{name}/capabilities: what the served model can do (runtime/capabilities.py)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from kserve.errors import ModelNotFound

from ..runtime.capabilities import describe
from ..runtime.service import GenerationService


def router(service: GenerationService) -> APIRouter:
    """The capabilities route of the served model."""
    api = APIRouter(tags=["Capabilities"])

    @api.get(
        "/v1/models/{model_name}/capabilities",
        summary="Tasks, each field's default and range, schedulers, output formats, limits and LoRA adapters",
        operation_id="model_capabilities",
    )
    async def capabilities(model_name: str) -> JSONResponse:
        if model_name != service.name:
            raise ModelNotFound(model_name)
        # The adapters' listing reads file headers: off the event loop.
        return JSONResponse(await asyncio.get_running_loop().run_in_executor(None, describe, service))

    return api
