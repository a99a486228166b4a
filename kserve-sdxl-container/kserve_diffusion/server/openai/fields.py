"""Reading the OpenAI routes' parameters: sizes, our own fields sent beside OpenAI's, multipart form values."""

from __future__ import annotations

import re
from typing import Any

from starlette.datastructures import UploadFile

from ... import media
from ...api.messages import quoted, shown
from ...api.request import FIELD_KINDS
from ...config import parse_bool
from .schemas import OpenAIError

SIZE = re.compile(r"(?P<width>\d{1,6})x(?P<height>\d{1,6})")  # bounded: int() of 4300+ digits raises
# OpenAI parameters of other image models that this server cannot honour.
UNSUPPORTED = (
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


def parse_size(size: str | None) -> dict[str, int]:
    """OpenAI's "WxH" (or "auto", or nothing: the model's default) as width and height."""
    if size is None or size == "auto":
        return {}
    match = SIZE.fullmatch(size)
    if match is None:
        raise OpenAIError(400, f'size: must be "WIDTHxHEIGHT" (e.g. "1024x1024") or "auto", got {shown(size)}', "size")
    return {"width": int(match["width"]), "height": int(match["height"])}


def our_fields(extra: dict[str, Any], set_by_endpoint: dict[str, str]) -> dict[str, Any]:
    """Our fields sent beside OpenAI's, checked against what the endpoint sets itself (`set_by_endpoint`: our
    field -> what to send instead)."""
    for name, value in extra.items():
        if name in UNSUPPORTED and value is not None:
            raise OpenAIError(
                400, f"{name}: an OpenAI parameter this server does not support, got {shown(value)}", name
            )
        if name in set_by_endpoint:
            raise OpenAIError(400, f"{name}: not accepted here ({set_by_endpoint[name]})", name)
    return {name: value for name, value in extra.items() if name not in UNSUPPORTED}


def is_true(value: Any) -> bool:
    """A form value that says true (anything unreadable is false)."""
    try:
        return value is not None and parse_bool(str(value))
    except ValueError:
        return False


def form_value(name: str, text: str) -> Any:
    """A multipart text field as the type of our field `name` (forms carry only text)."""
    kind = FIELD_KINDS.get(name)
    try:
        if kind == "int":
            return int(text)
        if kind == "float":
            return float(text)
    except ValueError:
        raise OpenAIError(400, f"{name}: must be a number, got {shown(text)}", name) from None
    if kind == "bool":
        try:
            return parse_bool(text)
        except ValueError:
            raise OpenAIError(400, f"{name}: must be true or false, got {shown(text)}", name) from None
    return text


def check_served(asked: Any, served: str, ready: bool) -> None:
    """404 for another model's name (leaving `model` out means the served one); 503 while not ready."""
    if asked is not None and asked != served:
        raise OpenAIError(
            404,
            f"model: the model {quoted(str(asked))} is not served here; this server serves {served!r}",
            "model",
            "model_not_found",
        )
    if not ready:
        raise OpenAIError(503, f"model {served!r} is not ready", code="not_ready")


async def upload_bytes(upload: UploadFile, name: str, max_bytes: int) -> bytes:
    """An uploaded image file's bytes: at most `max_bytes`, and a PNG, JPEG or WebP by its signature."""
    data = await upload.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise OpenAIError(400, f"{name}: the file is more than the limit of {max_bytes} bytes", name)
    if not media.looks_like_image_file(data):
        raise OpenAIError(400, f"{name}: the file is not a PNG, JPEG or WebP image", name)
    return data
