"""Media encoding: PIL images -> file bytes -> base64 / data URLs."""

from __future__ import annotations

import base64
import io

from PIL.Image import Image

IMAGE_FORMATS = {"png": ("PNG", "image/png")}


def encode_image(image: Image, output_format: str = "png") -> bytes:
    """The image as a file in `output_format`."""
    pil_format, _ = IMAGE_FORMATS[output_format]
    buffer = io.BytesIO()
    image.save(buffer, format=pil_format)
    return buffer.getvalue()


def content_type(output_format: str = "png") -> str:
    """The MIME type of `output_format`."""
    return IMAGE_FORMATS[output_format][1]


def to_base64(data: bytes) -> str:
    """Standard base64 text of `data`."""
    return base64.b64encode(data).decode("ascii")


def data_url(data: bytes, mime: str) -> str:
    """`data` as a data: URL."""
    return f"data:{mime};base64,{to_base64(data)}"
