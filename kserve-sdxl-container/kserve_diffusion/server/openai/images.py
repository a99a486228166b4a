"""OpenAI Images API over the served model: `/openai/v1/images/generations`, `/images/edits`, `/models`.

OpenAI's parameters are translated to GenerationRequest fields, our own fields arrive as extra body
fields (the SDKs' `extra_body`), and every answer, errors included, has OpenAI's shape. Generation goes
through the same DiffusionModel path as v1 and v2: same checks, queue, deadlines and metrics.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Annotated, Any, Literal, Protocol

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse

from ... import media
from ...api.messages import quoted
from ...api.request import MAX_PROMPT_CHARS
from ...api.results import GenerationResult, cache_fields
from ...redact import loggable, request_id
from .fields import check_served, form_value, is_true, our_fields, parse_size, upload_bytes
from .schemas import (
    ERRORS,
    ImageData,
    ImageGenerationRequest,
    ImagesResponse,
    ModelCard,
    ModelList,
    OpenAIError,
    OpenAIRoute,
)

PREFIX = "/openai/v1"
# Our fields the endpoint sets from OpenAI parameters: sent as extra fields they are a 400 naming the right one.
SET_BY_IMAGES = {
    "num_images": "send n",
    "width": "send size",
    "height": "send size",
    "task_type": "the endpoint sets it: generations is text2img, edits is img2img or inpaint",
    "image": "send it to /openai/v1/images/edits as the multipart file `image`",
    "image_url": "send the image to /openai/v1/images/edits as the multipart file `image`",
    "mask": "send it to /openai/v1/images/edits as the multipart file `mask`",
    "mask_url": "send the mask to /openai/v1/images/edits as the multipart file `mask`",
}
# The edits form fields the endpoint reads itself; any other field is one of ours (seed, strength, ...).
_EDIT_FORM_FIELDS = frozenset(
    {"image", "image[]", "prompt", "mask", "model", "n", "size", "response_format", "output_format"}
    | {"output_compression", "quality", "background", "user", "safety_identifier", "stream"}
)
logger = logging.getLogger("kserve.diffusion")


class ServedModel(Protocol):
    """What the routes need of DiffusionModel."""

    name: str
    ready: bool

    def tasks(self) -> tuple[str, ...]: ...

    async def generate(self, instances: list[Any], request_id: str) -> list[GenerationResult]: ...


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
        check_served(name, model.name, model.ready)
        if "text2img" not in model.tasks():
            raise OpenAIError(400, f"model: {model.name!r} generates video only, not images", "model")

    def instance(
        prompt: str, size: str | None, n: int | None, output_format: str | None, compression: int | None
    ) -> dict[str, Any]:
        fields: dict[str, Any] = {"prompt": prompt, **parse_size(size)}
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

    @api.get("/models/{name}", response_model=ModelCard, responses={404: ERRORS[404]}, summary="Describe a model")
    async def get_model(name: str) -> ModelCard:
        if name != model.name:
            raise OpenAIError(404, f"the model {quoted(name)} is not served here", "model", "model_not_found")
        return card()

    @api.post(
        "/images/generations",
        response_model=ImagesResponse,
        responses=ERRORS,
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
        fields.update(our_fields(body.model_extra or {}, SET_BY_IMAGES))
        fields["task_type"] = "text2img"
        return await respond(fields, request, body.user or body.safety_identifier)

    @api.post(
        "/images/edits",
        response_model=ImagesResponse,
        responses=ERRORS,
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
        if is_true(form.get("stream")):
            raise OpenAIError(400, "stream: streaming is not supported", "stream")
        extra = {key: form_value(key, str(value)) for key, value in form.items() if key not in _EDIT_FORM_FIELDS}
        fields = instance(prompt, size, n, output_format, output_compression)
        fields.update(our_fields(extra, SET_BY_IMAGES))
        fields["image"] = await upload_bytes(image, "image", max_image_bytes)
        # Without a mask, the image's own transparent pixels mark where to edit (OpenAI's rule).
        given = await upload_bytes(mask, "mask", max_image_bytes) if mask is not None else None
        # Decoding the alpha channel is CPU work: off the event loop.
        loop = asyncio.get_running_loop()
        converted = await loop.run_in_executor(None, media.transparent_mask, given or fields["image"], max_pixels)
        if converted is not None or given is not None:
            fields["mask"] = converted or given
        return await respond(fields, request, user)

    async def respond(fields: dict[str, Any], request: Request, user: str | None) -> ImagesResponse:
        rid = request_id(request.headers.get("x-request-id"))
        if user:
            logger.info("request=%s openai user=%s", rid, loggable(user))
        [result] = await model.generate([fields], rid)
        return ImagesResponse(
            created=int(time.time()),
            data=[ImageData(b64_json=media.to_base64(file)) for file in result.files],
            output_format=result.output_format,  # type: ignore[arg-type]
            size=f"{result.width}x{result.height}",
            seed=result.seed,
            cache=None if result.cache is None else cache_fields(result.cache),
        )

    return api
