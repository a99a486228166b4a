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
from starlette.datastructures import UploadFile as StarletteUpload

from ... import media
from ...api.inputs import MAX_EDIT_IMAGES
from ...api.messages import quoted
from ...api.request import MAX_PROMPT_CHARS, VIDEO_TASKS
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
    "task_type": "the endpoint sets it: generations is text2img, edits is edit, img2img or inpaint",
    "images": "send the pictures to /openai/v1/images/edits as multipart files `image[]`",
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
GENERATION_TASKS = ("text2img",)
EDIT_TASKS = ("edit", "img2img", "inpaint")


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

    def check_model(name: str | None, route_tasks: tuple[str, ...]) -> None:
        check_served(name, model.name, model.ready)
        served = model.tasks()
        if not set(route_tasks) & set(served):
            what = "video only, not images" if not set(served) - set(VIDEO_TASKS) else f"{', '.join(served)}"
            route = "generations" if route_tasks == GENERATION_TASKS else "edits"
            raise OpenAIError(
                400, f"model: {model.name!r} serves {what}; images/{route} needs {' or '.join(route_tasks)}", "model"
            )

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
        response_model_exclude_none=True,  # data[] holds b64_json or url, as OpenAI's answers do
        responses=ERRORS,
        summary="Create images from a prompt (OpenAI Images API)",
    )
    async def generations(body: ImageGenerationRequest, request: Request) -> ImagesResponse:
        check_model(body.model, GENERATION_TASKS)
        fields = instance(body.prompt, body.size, body.n, body.output_format, body.output_compression)
        if body.response_format is not None:
            fields["response_format"] = body.response_format
        fields.update(our_fields(body.model_extra or {}, SET_BY_IMAGES))
        fields["task_type"] = "text2img"
        return await respond(fields, request, body.user or body.safety_identifier)

    @api.post(
        "/images/edits",
        response_model=ImagesResponse,
        response_model_exclude_none=True,  # data[] holds b64_json or url, as OpenAI's answers do
        responses=ERRORS,
        summary="Edit pictures by instruction (edit models: several files as image[]), change one (img2img) or "
        "repaint its masked area (inpaint), from a prompt",
    )
    async def edits(
        request: Request,
        prompt: Annotated[str, Form(min_length=1, max_length=MAX_PROMPT_CHARS)],
        image: Annotated[
            UploadFile | None,
            File(description="the input picture (PNG, JPEG or WebP); several as image[] on an edit model"),
        ] = None,
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
        check_model(model_name, EDIT_TASKS)
        form = await request.form()
        if is_true(form.get("stream")):
            raise OpenAIError(400, "stream: streaming is not supported", "stream")
        extra = {key: form_value(key, str(value)) for key, value in form.items() if key not in _EDIT_FORM_FIELDS}
        fields = instance(prompt, size, n, output_format, output_compression)
        if response_format is not None:
            fields["response_format"] = response_format
        fields.update(our_fields(extra, SET_BY_IMAGES))
        pictures = await uploaded_pictures([*form.getlist("image"), *form.getlist("image[]")])
        given = await upload_bytes(mask, "mask", max_image_bytes) if mask is not None else None
        edits_by_instruction = "edit" in model.tasks()
        if len(pictures) > 1:
            if not edits_by_instruction:
                raise OpenAIError(
                    400,
                    f"image: {model.name!r} changes one picture (it serves {', '.join(model.tasks())}), got "
                    f"{len(pictures)}",
                    "image",
                )
            if given is not None:
                raise OpenAIError(400, "mask: applies to one picture, not to several", "mask")
            fields["images"] = pictures
            return await respond(fields, request, user)
        fields["image"] = pictures[0]
        if given is None and edits_by_instruction:  # an instruction edits the whole picture, transparency included
            return await respond(fields, request, user)
        # Without a mask, the image's own transparent pixels mark where to edit (OpenAI's rule).
        # Decoding the alpha channel is CPU work: off the event loop.
        loop = asyncio.get_running_loop()
        converted = await loop.run_in_executor(None, media.transparent_mask, given or fields["image"], max_pixels)
        if converted is not None or given is not None:
            fields["mask"] = converted or given
        return await respond(fields, request, user)

    async def uploaded_pictures(files: list[Any]) -> list[bytes]:
        """The bytes of the uploaded `image` / `image[]` files, each checked; at least one."""
        if not files:
            raise OpenAIError(400, "image: required: the input picture as a file (several as image[])", "image")
        if len(files) > MAX_EDIT_IMAGES:
            raise OpenAIError(400, f"image: at most {MAX_EDIT_IMAGES} pictures, got {len(files)}", "image")
        pictures = []
        for index, upload in enumerate(files):
            name = "image" if len(files) == 1 else f"image[{index}]"
            if not isinstance(upload, StarletteUpload):
                raise OpenAIError(400, f"{name}: must be a file, got a text field", "image")
            pictures.append(await upload_bytes(upload, name, max_image_bytes))
        return pictures

    async def respond(fields: dict[str, Any], request: Request, user: str | None) -> ImagesResponse:
        rid = request_id(request.headers.get("x-request-id"))
        if user:
            logger.info("request=%s openai user=%s", rid, loggable(user))
        [result] = await model.generate([fields], rid)
        return ImagesResponse(
            created=int(time.time()),
            data=[ImageData(url=url) for url in result.urls]
            or [ImageData(b64_json=media.to_base64(file)) for file in result.files],
            output_format=result.output_format,  # type: ignore[arg-type]
            size=f"{result.width}x{result.height}",
            seed=result.seed,
            cache=None if result.cache is None else cache_fields(result.cache),
        )

    return api
