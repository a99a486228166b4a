"""OpenAI Images API over the served model: `/openai/v1/images/generations`, `/images/edits`, `/models`.

OpenAI's parameters are translated to GenerationRequest fields, our own fields arrive as extra body
fields (the SDKs' `extra_body`), and every answer, errors included, has OpenAI's shape. Generation goes
through the same DiffusionModel path as v1 and v2: same checks, queue, deadlines and metrics.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import Callable, Coroutine
from typing import Annotated, Any, Literal, Protocol

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field

from . import media
from .errors import GenerationFailed, RequestError, ServerBusy, ServingError
from .protocols import GenerationResult
from .schemas import FIELD_KINDS, MAX_PROMPT_CHARS, describe_error

PREFIX = "/openai/v1"
OWNER = "kserve-diffusion"
_SIZE = re.compile(r"(?P<width>\d+)x(?P<height>\d+)")
# Our fields the endpoint sets from OpenAI parameters: sent as extra fields they are a 400 naming the right one.
_SET_BY_ENDPOINT = {
    "num_images": "send n",
    "width": "send size",
    "height": "send size",
    "task_type": "the endpoint sets it: generations is text2img, edits is img2img or inpaint",
    "image": "send it to /openai/v1/images/edits as the multipart file `image`",
    "image_url": "send the image to /openai/v1/images/edits as the multipart file `image`",
    "mask": "send it to /openai/v1/images/edits as the multipart file `mask`",
    "mask_url": "send the mask to /openai/v1/images/edits as the multipart file `mask`",
}
# OpenAI parameters of other image models that this server cannot honour.
_UNSUPPORTED = (
    "style",
    "moderation",
    "partial_images",
    "input_fidelity",
    "markup",
    "svg",
    "complexity",
    "frame_count",
    "frame_duration_ms",
)
# Our field names as the OpenAI parameter a client sent, for error messages.
_OPENAI_NAMES = {"num_images": "n", "quality": "output_compression", "width": "size", "height": "size"}
_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")
# The edits form fields the endpoint reads itself; any other field is one of ours (seed, strength, ...).
_EDIT_FORM_FIELDS = frozenset(
    {"image", "image[]", "prompt", "mask", "model", "n", "size", "response_format", "output_format"}
    | {"output_compression", "quality", "background", "user", "safety_identifier", "stream"}
)
logger = logging.getLogger("kserve.diffusion")


class ImageGenerationRequest(BaseModel):
    """OpenAI's image generation body; any GenerationRequest field (seed, num_inference_steps, ...) may be added."""

    model_config = ConfigDict(extra="allow")

    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS, description="what to draw")
    model: str | None = Field(None, description="the served model's name (GET /openai/v1/models); may be omitted")
    n: int | None = Field(None, ge=1, description="how many images (1 to the server's --max_num_images)")
    size: str | None = Field(None, description='"WIDTHxHEIGHT", e.g. "1024x1024", or "auto" for the model\'s default')
    response_format: Literal["b64_json", "url"] | None = Field(
        None, description="b64_json (the only one served: the server stores no images to link to)"
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
    """One generated image."""

    b64_json: str = Field(description="the image file, base64")


class ImagesResponse(BaseModel):
    """OpenAI's images answer, plus the seed that reproduces it."""

    created: int = Field(description="Unix time of the answer")
    data: list[ImageData]
    output_format: Literal["png", "jpeg", "webp"]
    size: str = Field(description='"WIDTHxHEIGHT" of the images')
    seed: int = Field(description="the seed used (send it back as extra body `seed` for the same images)")


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


class ServedModel(Protocol):
    """What the routes need of DiffusionModel."""

    name: str
    ready: bool

    def tasks(self) -> tuple[str, ...]: ...

    async def generate(self, instances: list[Any], request_id: str) -> list[GenerationResult]: ...


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


def _openai_message(message: str) -> tuple[str, str | None]:
    """A RequestError message with our field names turned into the OpenAI parameter sent, and that parameter."""
    parts = []
    for part in message.split("; "):
        field, _, problem = part.partition(": ")
        if field in _OPENAI_NAMES:
            name = _OPENAI_NAMES[field]
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
        error = {**error, "loc": tuple(loc)}
        messages.append(describe_error(error, model=ImageGenerationRequest))
        params.append(loc[0] if loc else None)
    return "; ".join(dict.fromkeys(messages)), params[0] if params else None


def as_openai_error(exc: Exception) -> OpenAIError | None:
    """The OpenAI-shaped answer for an exception the server knows, None for others."""
    if isinstance(exc, OpenAIError):
        return exc
    if isinstance(exc, RequestValidationError):
        message, param = _validation_message(exc)
        return OpenAIError(400, message, param, "invalid_value")
    if isinstance(exc, RequestError):
        message, param = _openai_message(str(exc))
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


def _size(size: str | None) -> dict[str, int]:
    if size is None or size == "auto":
        return {}
    match = _SIZE.fullmatch(size)
    if match is None:
        raise OpenAIError(400, f'size: must be "WIDTHxHEIGHT" (e.g. "1024x1024") or "auto", got {size!r}', "size")
    return {"width": int(match["width"]), "height": int(match["height"])}


def _extras(extra: dict[str, Any]) -> dict[str, Any]:
    """Our fields sent beside OpenAI's, checked against what the endpoint sets itself."""
    for name, value in extra.items():
        if name in _UNSUPPORTED and value is not None:
            raise OpenAIError(400, f"{name}: an OpenAI parameter this server does not support, got {value!r}", name)
        if name in _SET_BY_ENDPOINT:
            raise OpenAIError(400, f"{name}: not accepted here ({_SET_BY_ENDPOINT[name]})", name)
    return {name: value for name, value in extra.items() if name not in _UNSUPPORTED}


def _form_value(name: str, text: str) -> Any:
    """A multipart text field as the type of our field `name` (forms carry only text)."""
    kind = FIELD_KINDS.get(name)
    try:
        if kind == "int":
            return int(text)
        if kind == "float":
            return float(text)
    except ValueError:
        raise OpenAIError(400, f"{name}: must be a number, got {text!r}", name) from None
    if kind == "bool":
        if text.lower() in _TRUE + _FALSE:
            return text.lower() in _TRUE
        raise OpenAIError(400, f"{name}: must be true or false, got {text!r}", name)
    return text


async def _file_bytes(upload: UploadFile, name: str, max_bytes: int) -> bytes:
    data = await upload.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise OpenAIError(400, f"{name}: the file is more than the limit of {max_bytes} bytes", name)
    if not media.looks_like_image_file(data):
        raise OpenAIError(400, f"{name}: the file is not a PNG, JPEG or WebP image", name)
    return data


_ERRORS: dict[int | str, dict[str, Any]] = {
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


def router(model: ServedModel, max_image_bytes: int, max_pixels: int) -> APIRouter:
    """The OpenAI routes for `model`; input files are limited to `max_image_bytes` and `max_pixels`."""
    # JSONResponse: KServe's app default (ORJSONResponse) is deprecated for routes with a response model.
    api = APIRouter(
        prefix=PREFIX, route_class=OpenAIRoute, tags=["OpenAI Images API"], default_response_class=JSONResponse
    )
    started = int(time.time())

    def card() -> ModelCard:
        return ModelCard(id=model.name, created=started)

    def check_model(name: str | None) -> None:
        if name is not None and name != model.name:
            raise OpenAIError(
                404,
                f"model: the model {name!r} is not served here; this server serves {model.name!r}",
                "model",
                "model_not_found",
            )
        if not model.ready:
            raise OpenAIError(503, f"model {model.name!r} is not ready", code="not_ready")
        if "text2img" not in model.tasks():
            raise OpenAIError(400, f"model: {model.name!r} generates video only, not images", "model")

    def instance(
        prompt: str, size: str | None, n: int | None, output_format: str | None, compression: int | None
    ) -> dict[str, Any]:
        fields: dict[str, Any] = {"prompt": prompt, **_size(size)}
        if n is not None:
            fields["num_images"] = n
        if output_format is not None:
            fields["output_format"] = output_format
        if compression is not None:
            fields["quality"] = compression
        return fields

    @api.get("/models", response_model=ModelList, summary="List the served model")
    async def list_models() -> ModelList:
        return ModelList(data=[card()])

    @api.get("/models/{name}", response_model=ModelCard, responses={404: _ERRORS[404]}, summary="Describe a model")
    async def get_model(name: str) -> ModelCard:
        if name != model.name:
            raise OpenAIError(404, f"the model {name!r} is not served here", "model", "model_not_found")
        return card()

    @api.post(
        "/images/generations",
        response_model=ImagesResponse,
        responses=_ERRORS,
        summary="Create images from a prompt (OpenAI Images API)",
    )
    async def generations(body: ImageGenerationRequest, request: Request) -> ImagesResponse:
        check_model(body.model)
        if body.response_format == "url":
            raise OpenAIError(
                400,
                'response_format: "url" is not supported (the server stores no images to link to); use b64_json',
                "response_format",
            )
        fields = instance(body.prompt, body.size, body.n, body.output_format, body.output_compression)
        fields.update(_extras(body.model_extra or {}))
        fields["task_type"] = "text2img"
        return await respond(fields, request, body.user or body.safety_identifier)

    @api.post(
        "/images/edits",
        response_model=ImagesResponse,
        responses=_ERRORS,
        summary="Edit an image (img2img), or repaint its masked area (inpaint), from a prompt",
    )
    async def edits(
        request: Request,
        image: Annotated[UploadFile, File(description="the input image (PNG, JPEG or WebP)")],
        prompt: Annotated[str, Form(min_length=1, max_length=MAX_PROMPT_CHARS)],
        mask: Annotated[
            UploadFile | None, File(description="where to repaint: transparent pixels (OpenAI's way) or white")
        ] = None,
        model_name: Annotated[str | None, Form(alias="model")] = None,
        n: Annotated[int | None, Form(ge=1)] = None,
        size: Annotated[str | None, Form(description='"WIDTHxHEIGHT", or "auto" to follow the input image')] = None,
        response_format: Annotated[Literal["b64_json", "url"] | None, Form()] = None,
        output_format: Annotated[Literal["png", "jpeg", "webp"] | None, Form()] = None,
        output_compression: Annotated[int | None, Form(ge=0, le=100)] = None,
        quality: Annotated[Literal["auto", "standard"] | None, Form()] = None,
        background: Annotated[Literal["auto", "opaque"] | None, Form()] = None,
        user: Annotated[str | None, Form()] = None,
    ) -> ImagesResponse:
        check_model(model_name)
        if response_format == "url":
            raise OpenAIError(400, 'response_format: "url" is not supported; use b64_json', "response_format")
        form = await request.form()
        if len(form.getlist("image")) + len(form.getlist("image[]")) > 1:
            raise OpenAIError(400, "image: one input image per request", "image")
        if str(form.get("stream", "false")).lower() in _TRUE:
            raise OpenAIError(400, "stream: streaming is not supported", "stream")
        extra = {key: _form_value(key, str(value)) for key, value in form.items() if key not in _EDIT_FORM_FIELDS}
        fields = instance(prompt, size, n, output_format, output_compression)
        fields.update(_extras(extra))
        fields["image"] = await _file_bytes(image, "image", max_image_bytes)
        # Without a mask, the image's own transparent pixels mark where to edit (OpenAI's rule).
        given = await _file_bytes(mask, "mask", max_image_bytes) if mask is not None else None
        # Decoding the alpha channel is CPU work: off the event loop.
        loop = asyncio.get_running_loop()
        converted = await loop.run_in_executor(None, media.transparent_mask, given or fields["image"], max_pixels)
        if converted is not None or given is not None:
            fields["mask"] = converted or given
        return await respond(fields, request, user)

    async def respond(fields: dict[str, Any], request: Request, user: str | None) -> ImagesResponse:
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex[:16]
        if user:
            logger.info("request=%s openai user=%s", request_id, user)
        [result] = await model.generate([fields], request_id)
        return ImagesResponse(
            created=int(time.time()),
            data=[ImageData(b64_json=media.to_base64(file)) for file in result.files],
            output_format=result.output_format,  # type: ignore[arg-type]
            size=f"{result.width}x{result.height}",
            seed=result.seed,
        )

    return api
