"""OpenAI's shapes: the request and response bodies, the error body, and how our errors map onto it."""

from __future__ import annotations

import re
from collections.abc import Callable, Coroutine
from typing import Any, Literal

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field

from ...api.messages import shown
from ...api.request import MAX_PROMPT_CHARS, describe_error
from ...errors import GenerationFailed, RequestError, ServerBusy, ServingError

OWNER = "kserve-diffusion"
# Our field names as the OpenAI parameter a client sent, for error messages.
OPENAI_NAMES = {
    "num_images": "n",
    "quality": "output_compression",
    "width": "size",
    "height": "size",
}
# The same for the Videos routes.
VIDEO_NAMES = {"video_width": "size", "video_height": "size", "num_frames": "seconds"}


class ImageGenerationRequest(BaseModel):
    """OpenAI's image generation body; any GenerationRequest field (seed, num_inference_steps, ...) may be added."""

    model_config = ConfigDict(extra="allow")

    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS, description="what to draw")
    model: str | None = Field(None, description="the served model's name (GET /openai/v1/models); may be omitted")
    n: int | None = Field(None, ge=1, description="how many images (1 to the server's --max_num_images)")
    size: str | None = Field(None, description='"WIDTHxHEIGHT", e.g. "1024x1024", or "auto" for the model\'s default')
    response_format: Literal["b64_json", "url"] | None = Field(
        None,
        description="b64_json (the files, base64) or url (presigned URLs; needs the server's --output_store); the "
        "server's --default_response_format when absent",
    )
    output_format: Literal["png", "jpeg", "webp"] | None = Field(None, description="file format (png by default)")
    output_compression: int | None = Field(
        None, ge=0, le=100, description="JPEG/WebP quality as OpenAI's: 100 is the best quality, 90 by default"
    )
    quality: Literal["auto", "standard"] | None = Field(
        None, description="OpenAI's rendering quality: only auto/standard; steps are set by num_inference_steps"
    )
    background: Literal["auto", "opaque"] | None = Field(None, description="images are always opaque")
    stream: Literal[False] | None = Field(None, description="streaming is not supported")
    user: str | None = Field(None, description="an end-user id, written to the server log")
    safety_identifier: str | None = Field(None, description="an end-user id, written to the server log")


class ImageData(BaseModel):
    """One generated image: the file as base64, or a presigned URL of it (response_format url)."""

    b64_json: str | None = Field(None, description="the image file, base64")
    url: str | None = Field(None, description="a presigned URL of the image file (--output_url_ttl_seconds)")


class ImagesResponse(BaseModel):
    """OpenAI's images answer, plus the seed that reproduces it."""

    created: int = Field(description="Unix time of the answer")
    data: list[ImageData]
    output_format: Literal["png", "jpeg", "webp"]
    size: str = Field(description='"WIDTHxHEIGHT" of the images')
    seed: int = Field(description="the seed used (send it back as extra body `seed` for the same images)")
    cache: dict[str, float] | None = Field(
        None, description="with --cache: skipped_layers, total_layers and skipped_fraction of this generation"
    )


class ModelCard(BaseModel):
    """One served model, as OpenAI lists models."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = OWNER


class ModelList(BaseModel):
    """The served models."""

    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    """What went wrong: OpenAI's error fields."""

    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """OpenAI's error body."""

    error: ErrorDetail


class OpenAIError(Exception):
    """An answer in OpenAI's error shape."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        code = code or ("invalid_value" if status == 400 else None)
        self.detail = ErrorDetail(message=message, type=_error_type(status), param=param, code=code)
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        """The JSON answer."""
        body = ErrorResponse(error=self.detail).model_dump()
        return JSONResponse(status_code=self.status, content=body, headers=self.headers)


def _error_type(status: int) -> str:
    if status == 429:
        return "rate_limit_error"
    return "invalid_request_error" if status < 500 else "server_error"


def _openai_message(message: str, names: dict[str, str]) -> tuple[str, str | None]:
    """A RequestError message with our field names turned into the OpenAI parameter sent (`names`), and that
    parameter."""
    parts = []
    for part in message.split("; "):
        field, _, problem = part.partition(": ")
        if field in names:
            name = names[field]
            part = f"{name}: {field} {problem}" if name == "size" else f"{name}: {problem}"
        parts.append(part)
    first = parts[0].partition(": ")[0]
    return "; ".join(parts), first if re.fullmatch(r"[A-Za-z_][\w.]*", first) else None


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    messages, params = [], []
    for error in exc.errors():
        loc = [str(part) for part in error["loc"] if part != "body"]
        if not loc and error["type"] in ("model_attributes_type", "dict_type"):
            messages.append("body: must be a JSON object (send Content-Type: application/json)")
            params.append(None)
            continue
        if error["type"] == "json_invalid":
            messages.append(f"body: malformed JSON ({error.get('ctx', {}).get('error', 'decode error')})")
            params.append(None)
            continue
        if loc and loc[0] in ("query", "path", "header"):  # a route's own parameter, not a body field
            name = shown(loc[-1])[1:-1]
            problem = error["msg"][:1].lower() + error["msg"][1:]
            messages.append(f"{name}: {problem}, got {shown(error.get('input'))}")
            params.append(loc[-1])
            continue
        error = {**error, "loc": tuple(loc)}
        messages.append(describe_error(error, model=ImageGenerationRequest))
        params.append(loc[0] if loc else None)
    return "; ".join(dict.fromkeys(messages)), params[0] if params else None


def as_openai_error(exc: Exception, names: dict[str, str] = OPENAI_NAMES) -> OpenAIError | None:
    """The OpenAI-shaped answer for an exception the server knows, None for others; a RequestError names the
    OpenAI parameter (`names`: our field -> the parameter that set it)."""
    if isinstance(exc, OpenAIError):
        return exc
    if isinstance(exc, RequestValidationError):
        message, param = _validation_message(exc)
        return OpenAIError(400, message, param, "invalid_value")
    if isinstance(exc, RequestError):
        message, param = _openai_message(str(exc), names)
        return OpenAIError(400, message, param, "invalid_value")
    if isinstance(exc, ServerBusy):  # OpenAI clients back off and retry on 429, honouring Retry-After
        return OpenAIError(429, exc.message, code="queue_full", headers=exc.headers)
    if isinstance(exc, ServingError):
        return OpenAIError(exc.http_status, exc.message, code=exc.outcome, headers=exc.headers)
    if isinstance(exc, GenerationFailed):
        return OpenAIError(500, str(exc), code="generation_failed")
    return None


class OpenAIRoute(APIRoute):
    """A route whose failures, request validation included, are answered in OpenAI's error shape."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        """The route's handler, wrapped to translate errors."""
        handler = super().get_route_handler()

        async def answer(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as exc:
                error = as_openai_error(exc)
                if error is None:
                    raise
                return error.response()

        return answer


ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in (
        (400, "invalid parameters: `error.param` names the one to fix"),
        (404, "the model is not served here"),
        (429, "the queue is full: retry after the Retry-After header's seconds"),
        (503, "not ready, or shutting down"),
        (504, "the request's timeout passed"),
        (507, "out of memory: ask for fewer or smaller images"),
        ("default", "any other failure, in the same shape"),  # also keeps FastAPI from listing a 422
    )
}


# OpenAPI links from a created video to the routes that take its id (clients and `make fuzz` follow them).
CREATED_VIDEO = {
    200: {
        "description": "the video object, queued",
        "links": {
            name: {"operationId": operation, "parameters": {"video_id": "$response.body#/id"}}
            for name, operation in (
                ("RetrieveVideo", "retrieve_video"),
                ("DeleteVideo", "delete_video"),
                ("VideoContent", "video_content"),
            )
        },
    }
}
# The create body as OpenAI documents it (our own fields may be added beside): published in /openapi.json.
CREATE_BODY = {
    "type": "object",
    "required": ["prompt"],
    "properties": {
        "prompt": {"type": "string", "minLength": 1, "maxLength": MAX_PROMPT_CHARS},
        "model": {"type": "string"},
        "seconds": {"type": "string", "pattern": "^[0-9]{1,4}$", "description": "whole seconds"},
        "size": {"type": "string", "pattern": "^[0-9]{1,5}x[0-9]{1,5}$", "description": "WIDTHxHEIGHT"},
        "input_reference": {"type": "string", "description": "an http(s) or data URL (a file in multipart)"},
    },
}
VIDEO_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": CREATE_BODY}}}}
