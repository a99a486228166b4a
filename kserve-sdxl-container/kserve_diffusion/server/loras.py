"""GET /v1/models/{name}/loras: the adapters a request may name in `loras`, with their family and rank."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from kserve.errors import ModelNotFound

from ..runtime.service import GenerationService


def router(service: GenerationService) -> APIRouter:
    """The adapter listing of the served model."""
    api = APIRouter(tags=["LoRA adapters"])

    @api.get("/v1/models/{model_name}/loras", summary="LoRA adapters in --lora_dir")
    async def loras(model_name: str) -> JSONResponse:
        if model_name != service.name:
            raise ModelNotFound(model_name)
        # Reading the files' headers is disk work: off the event loop.
        listing = await asyncio.get_running_loop().run_in_executor(None, service.loras)
        return JSONResponse({"loras": listing, "max_loras_per_request": service.config.max_loras_per_request})

    return api
