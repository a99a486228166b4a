"""A queued job's requests as stored for whichever replica takes it: the checked requests with their seed fixed,
and their input pictures inline (as decoded at submission, lossless PNG), so a re-run after a replica died
makes the same result and never fetches a URL again."""

from __future__ import annotations

import base64
import io
import secrets
from typing import Any

import orjson
from PIL import Image

from ..api.inputs import InputImages
from ..api.request import GenerationRequest, Limits, fill
from ..runtime.service import RANDOM_SEED_RANGE, Prepared

PICTURE_FIELDS = ("image", "image_url", "mask", "mask_url", "images")
PLACEHOLDER = "inline"  # stands for a picture field the request sent: the picture itself travels decoded


def with_seed(prepared: Prepared) -> Prepared:
    """The request with a seed chosen now when it gave none: every try of the job makes the same result."""
    if prepared.request.seed is not None:
        return prepared
    return Prepared(fill(prepared.request, seed=secrets.randbelow(RANDOM_SEED_RANGE)), prepared.inputs)


def encode(items: list[Prepared]) -> bytes:
    """The job's requests as stored with it (JSON)."""
    return orjson.dumps([_encode_one(item) for item in items])


def decode(data: bytes, limits: Limits) -> list[Prepared]:
    """The job's requests back, ready for the accelerator queue (checked again against this replica's limits)."""
    return [_decode_one(item, limits) for item in orjson.loads(data)]


def _encode_one(item: Prepared) -> dict[str, Any]:
    request = item.request
    values = request.model_dump(mode="json", exclude=set(PICTURE_FIELDS))
    for name in PICTURE_FIELDS:  # what was sent, without the bytes: the rules that look at it still see it
        value = getattr(request, name)
        if value is not None:
            values[name] = [PLACEHOLDER] * len(value) if name == "images" else PLACEHOLDER
    inputs = item.inputs
    return {
        "request": values,
        "sent": sorted(request.model_fields_set),
        "image": _png(inputs.image),
        "mask": _png(inputs.mask),
        "pictures": [_png(picture) for picture in inputs.pictures],
    }


def _decode_one(item: dict[str, Any], limits: Limits) -> Prepared:
    request = GenerationRequest.model_validate_json(orjson.dumps(item["request"]), context=limits)
    request.__pydantic_fields_set__.intersection_update(item["sent"])  # "sent by the client" survives the trip
    inputs = InputImages(
        image=_picture(item["image"]),
        mask=_picture(item["mask"]),
        pictures=tuple(_picture(picture) for picture in item["pictures"]),
    )
    return Prepared(request, inputs)


def _png(picture: Image.Image | None) -> str | None:
    if picture is None:
        return None
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", compress_level=1)  # lossless; fast rather than small
    return base64.b64encode(buffer.getvalue()).decode()


def _picture(data: str | None) -> Image.Image | None:
    if data is None:
        return None
    picture = Image.open(io.BytesIO(base64.b64decode(data)))
    picture.load()
    return picture
