"""OpenAI Videos API over the job manager: `/openai/v1/videos` create, list, retrieve, delete, content.

A video is a job made through these routes. `seconds` and `size` become `num_frames` (seconds x fps + 1,
Wan's 4k+1 at whole seconds and an even fps) and `video_width`/`video_height`; `input_reference` (an image
file, or a URL in JSON) makes it image-to-video, sized from the picture without `size`; our own fields (seed,
num_inference_steps, fps, negative_prompt, ...) come as extra fields, in JSON or in the multipart form
the SDK sends. Answers and errors have OpenAI's shapes.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from starlette.datastructures import UploadFile

from ... import media
from ...api.messages import shown, type_name
from ...api.request import GenerationRequest
from ...errors import JobNotFound, RequestError, ServerBusy
from ...jobs.manager import JobManager
from ...jobs.records import JobRecord
from ...redact import request_id
from ..auth import caller_identity
from ..jobs import SlotResponse, Slots, open_download
from .fields import check_served, form_value, our_fields, parse_size, upload_bytes
from .images import PREFIX
from .schemas import CREATED_VIDEO, ERRORS, VIDEO_BODY, VIDEO_NAMES, OpenAIError, OpenAIRoute, as_openai_error

STATUSES = {
    "queued": "queued",
    "running": "in_progress",
    "succeeded": "completed",
    "failed": "failed",
    "cancelled": "failed",
}
MAX_SECONDS_DIGITS = 4
# Our fields that `seconds` and `size` set: sent as extra fields they are a 400 naming the OpenAI one.
SET_BY_VIDEOS = {
    "num_frames": "send seconds",
    "video_width": "send size",
    "video_height": "send size",
    "width": "send size",
    "height": "send size",
    "task_type": "the endpoint sets it: text2video, or img2video with input_reference",
    "num_images": "one video per request",
    "image": "send the picture as input_reference",
    "image_url": "send the picture as input_reference",
    "mask": "videos take no mask",
    "mask_url": "videos take no mask",
}


def video_object(record: JobRecord, ttl: float) -> dict[str, Any]:
    """The job as OpenAI's video object."""
    error = None
    if record.status == "cancelled":
        error = {"code": "cancelled", "message": "the video job was cancelled"}
    elif record.error is not None:
        error = {"code": str(record.error.get("status", "failed")), "message": record.error.get("message", "")}
    return {
        "id": record.id,
        "object": "video",
        "status": STATUSES[record.status],
        "progress": round(record.progress()["fraction"] * 100),
        "created_at": int(record.created_at),
        "completed_at": int(record.finished_at) if record.finished_at else None,
        "expires_at": int(record.finished_at + ttl) if record.finished_at else None,
        "model": record.model,
        "prompt": record.extra.get("prompt"),
        "seconds": record.extra.get("seconds"),
        "size": record.extra.get("size"),
        "error": error,
        "remixed_from_video_id": None,
    }


def _seconds(value: Any, fps: int, max_frames: int) -> tuple[str, int]:
    """OpenAI's `seconds` ("4") as (the text shown back, num_frames)."""
    text = str(value).strip()
    # ASCII digits only: "²" and "①" are str.isdigit() but not int(), and "١٢" would be taken as 12.
    if not (text.isascii() and text.isdigit() and len(text) <= MAX_SECONDS_DIGITS and int(text) >= 1):
        raise OpenAIError(400, f"seconds: must be a whole number of seconds, at least 1, got {shown(value)}", "seconds")
    frames = int(text) * fps + 1
    if frames > max_frames:
        most = (max_frames - 1) // fps
        raise OpenAIError(
            400,
            f"seconds: {text} s at {fps} fps is {frames} frames; this server makes at most {max_frames} frames "
            f"(at most {most} s at {fps} fps; send a lower fps for longer videos)",
            "seconds",
        )
    return text, frames


async def _reference(value: Any, served: tuple[str, ...], max_bytes: int) -> dict[str, Any]:
    """The fields `input_reference` sets: the task, and the picture (an uploaded file, or a URL in JSON)."""
    if value is None:
        if "text2video" not in served:
            raise OpenAIError(400, "input_reference: this model makes video from an image; send one", "input_reference")
        return {"task_type": "text2video"}
    if "img2video" not in served:
        raise OpenAIError(
            400, "input_reference: image-to-video is not served by this model (text-to-video only)", "input_reference"
        )
    if isinstance(value, UploadFile):
        return {"task_type": "img2video", "image": await upload_bytes(value, "input_reference", max_bytes)}
    if isinstance(value, str) and value:
        return {"task_type": "img2video", "image_url": value}  # http(s) or data URL: the server's input rules
    # Never echoed: a URL in the wrong place may still be a pre-signed one.
    raise OpenAIError(
        400, f"input_reference: an image file, or a URL in JSON, got {type_name(value)}", "input_reference"
    )


def router(jobs: JobManager, ttl: float, max_image_bytes: int, owner_header: str | None, downloads: Slots) -> APIRouter:
    """The Videos routes, answered from `jobs` (finished videos are kept `ttl` seconds; input_reference files
    are at most `max_image_bytes`); each caller sees only its own videos; at most `downloads` files are
    streamed at once."""
    api = APIRouter(
        prefix=PREFIX, route_class=OpenAIRoute, tags=["OpenAI Videos API"], default_response_class=JSONResponse
    )
    service = jobs.service

    def caller(request: Request) -> str | None:
        return caller_identity(request.headers, owner_header)

    async def find(video_id: str, request: Request) -> JobRecord:
        try:
            record = await jobs.get(video_id, caller(request))
        except JobNotFound as exc:
            raise OpenAIError(404, exc.message, "video_id", "video_not_found") from None
        if record.api != "openai":
            raise OpenAIError(404, "no video with this id here", "video_id", "video_not_found")
        return record

    async def read_body(request: Request) -> dict[str, Any]:
        content_type = request.headers.get("content-type", "")
        if content_type.startswith("multipart/form-data") or content_type.startswith(
            "application/x-www-form-urlencoded"
        ):
            form = await request.form()
            fields: dict[str, Any] = {}
            for key, value in form.multi_items():
                if isinstance(value, UploadFile):
                    fields[key] = value
                else:
                    fields[key] = form_value(key, value)  # typed as our field `key`, text otherwise
            return fields
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError as exc:
            raise OpenAIError(400, f"body: malformed JSON ({exc})") from None
        if not isinstance(body, dict):
            raise OpenAIError(400, "body: must be a JSON object or a multipart form")
        return body

    @api.post(
        "/videos",
        responses={**ERRORS, **CREATED_VIDEO},
        summary="Create a video job (OpenAI Videos API)",
        operation_id="create_video",
        openapi_extra=VIDEO_BODY,
    )
    async def create(request: Request) -> JSONResponse:
        body = await read_body(request)
        check_served(body.pop("model", None), service.name, service.ready)
        prompt = body.pop("prompt", None)
        if not isinstance(prompt, str) or not prompt:
            raise OpenAIError(400, "prompt: required, a non-empty string", "prompt")
        served = service.tasks()
        if not {"text2video", "img2video"} & set(served):
            raise OpenAIError(400, f"model: {service.name!r} does not generate video", "model")
        reference = await _reference(body.pop("input_reference", None), served, max_image_bytes)
        seconds = body.pop("seconds", None)
        size = body.pop("size", None)
        fields: dict[str, Any] = {**our_fields(body, SET_BY_VIDEOS), "prompt": prompt, **reference}
        if seconds is not None:
            try:
                fps = fields["fps"] if "fps" in fields else service.default_fps(fields)
            except RequestError as exc:
                error = as_openai_error(exc, VIDEO_NAMES)
                assert error is not None
                raise error from None
            if not isinstance(fps, int) or isinstance(fps, bool):
                raise OpenAIError(400, f"fps: must be an integer, got {shown(fps)}", "fps")
            seconds, fields["num_frames"] = _seconds(seconds, fps, service.limits.max_frames)
        if size is not None:
            dimensions = parse_size(str(size))
            fields["video_width"], fields["video_height"] = dimensions.get("width"), dimensions.get("height")
            fields = {k: v for k, v in fields.items() if v is not None}
        rid = request_id(request.headers.get("x-request-id"))

        def describe(requests: list[GenerationRequest]) -> dict[str, Any]:
            # What will be made, as OpenAI shows it: whole seconds and WxH.
            [made] = requests
            shown_seconds = seconds if seconds is not None else str((made.num_frames - 1) // made.fps)
            size = f"{made.video_width}x{made.video_height}"
            kind = media.content_type(made.output_format or "mp4")
            return {"prompt": prompt, "seconds": shown_seconds, "size": size, "content_type": kind}

        try:
            record = await jobs.submit([fields], rid, api="openai", describe=describe, owner=caller(request))
        except RequestError as exc:  # named as the parameter the client sent: size, seconds
            error = as_openai_error(exc, VIDEO_NAMES)
            assert error is not None
            raise error from None
        return JSONResponse(video_object(record, ttl))

    @api.get("/videos", summary="List the caller's recent videos", operation_id="list_videos")
    async def list_videos(
        request: Request,
        after: Annotated[str | None, Query()] = None,
        limit: Annotated[int, Query(ge=1, le=100)] = 20,
        order: Annotated[Literal["asc", "desc"], Query()] = "desc",
    ) -> JSONResponse:
        page = await jobs.recent(caller(request), "openai", limit, after, ascending=order == "asc")
        data = [video_object(r, ttl) for r in page.records]
        return JSONResponse(
            {
                "object": "list",
                "data": data,
                "first_id": page.records[0].id if page.records else None,
                "last_id": page.records[-1].id if page.records else None,
                "has_more": page.has_more,
            }
        )

    @api.get("/videos/{video_id}", responses=ERRORS, summary="A video job's status", operation_id="retrieve_video")
    async def retrieve(video_id: str, request: Request) -> JSONResponse:
        return JSONResponse(video_object(await find(video_id, request), ttl))

    @api.delete(
        "/videos/{video_id}",
        responses=ERRORS,
        summary="Delete a video (cancelling it if unfinished)",
        operation_id="delete_video",
    )
    async def delete(video_id: str, request: Request) -> JSONResponse:
        await find(video_id, request)
        await jobs.forget(video_id, caller(request))
        return JSONResponse({"id": video_id, "object": "video.deleted", "deleted": True})

    @api.get(
        "/videos/{video_id}/content",
        responses=ERRORS,
        summary="The video file (MP4 unless asked otherwise)",
        operation_id="video_content",
    )
    async def content(
        request: Request,
        video_id: str,
        variant: Annotated[str, Query()] = "video",
        redirect: Annotated[
            bool,
            Query(description="with --output_store: false streams the file through the server instead of a 302"),
        ] = True,
    ) -> Response:
        if variant != "video":
            raise OpenAIError(400, f"variant: only video is served, got {shown(variant)}", "variant")
        record = await find(video_id, request)
        if record.status != "succeeded":
            state = STATUSES[record.status]
            raise OpenAIError(409, f"the video is {state}, not completed: there is no content yet", "video_id")
        kind = record.extra.get("content_type", "video/mp4")
        outputs = service.outputs
        keys = await jobs.stored_object_keys(video_id)
        key = keys[0] if keys else None
        if outputs is not None and key is not None and redirect:  # the client fetches it from the store itself
            return RedirectResponse(outputs.presign(key), 302, headers={"Cache-Control": "no-store"})
        try:
            if outputs is not None and key is not None:  # ?redirect=false: through the server
                opened: Any = await open_download(downloads, lambda: outputs.open(key))
            else:
                opened = await open_download(downloads, lambda: jobs.read(video_id, "content"))
        except ServerBusy as exc:
            raise OpenAIError(503, exc.message, "video_id", headers=exc.headers) from None
        if opened is None:
            raise OpenAIError(404, "the video's content has expired", "video_id", "video_not_found")
        stored, release = opened
        headers = {"Content-Disposition": "inline", "Content-Length": str(stored.size)}
        return SlotResponse(stored.chunks, release, media_type=kind, headers=headers)

    return api
