"""Decoding helpers for the tests."""

from __future__ import annotations

import base64
import io

from PIL import Image


def decode_data_url(url: str) -> tuple[str, bytes]:
    """(mime type, file bytes) of a data: URL."""
    header, payload = url.split(",", 1)
    assert header.startswith("data:") and header.endswith(";base64"), header
    return header[5:-7], base64.b64decode(payload)


def open_image(data: bytes) -> Image.Image:
    """A PIL image from file bytes (loaded eagerly)."""
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def small(**fields: object) -> dict:
    """A cheap text2img instance for the tiny model."""
    return {"prompt": "a red fox", "height": 64, "width": 64, "num_inference_steps": 2, **fields}
