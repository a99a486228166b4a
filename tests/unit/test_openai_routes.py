"""The OpenAI routes in-process with a stand-in model: error mapping and answer shape."""

from __future__ import annotations

import base64
import io
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from kserve_diffusion.api.results import GenerationResult
from kserve_diffusion.errors import GenerationFailed, OutOfMemory, ServerBusy
from kserve_diffusion.server.openai import images as openai_images
from PIL import Image

from tests.helpers import open_image


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


class StandIn:
    """A served model whose generate raises `failure` (or returns one tiny PNG)."""

    def __init__(self, tasks: tuple[str, ...] = ("text2img",), ready: bool = True, failure: Exception | None = None):
        self.name, self.ready, self._tasks, self.failure = "sdxl", ready, tasks, failure

    def tasks(self) -> tuple[str, ...]:
        return self._tasks

    async def generate(self, instances: list[Any], request_id: str) -> list[GenerationResult]:
        if self.failure is not None:
            raise self.failure
        return [GenerationResult("text2img", 1, [png(Image.new("RGB", (8, 8)))], "png", 8, 8)]


def call(model: StandIn) -> httpx.Response:
    app = FastAPI()
    app.include_router(openai_images.router(model, max_image_bytes=1000, max_pixels=1000))  # type: ignore[arg-type]
    with TestClient(app) as test_client:
        return test_client.post("/openai/v1/images/generations", json={"prompt": "a fox"})


@pytest.mark.parametrize(
    ("model", "status", "code", "headers"),
    [
        (StandIn(failure=ServerBusy("the queue is full", retry_after=7)), 429, "queue_full", {"retry-after": "7"}),
        (StandIn(failure=OutOfMemory("out of memory generating")), 507, "oom", {}),
        (StandIn(failure=GenerationFailed("generation failed (ValueError)")), 500, "generation_failed", {}),
        (StandIn(ready=False), 503, "not_ready", {}),
        (StandIn(tasks=("text2video",)), 400, "invalid_value", {}),
    ],
)
def test_route_errors_map_to_openai_statuses(model: StandIn, status: int, code: str, headers: dict) -> None:
    answer = call(model)
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert error["code"] == code
    assert error["type"] == {429: "rate_limit_error", 400: "invalid_request_error"}.get(status, "server_error")
    assert headers.items() <= answer.headers.items()


def test_route_answers_in_openai_shape() -> None:
    answer = call(StandIn())
    assert answer.status_code == 200
    body = answer.json()
    assert (body["size"], body["output_format"], body["seed"]) == ("8x8", "png", 1)
    assert open_image(base64.b64decode(body["data"][0]["b64_json"])).size == (8, 8)
