"""Input decoding: inline values (base64, data URLs, raw bytes) -> image files -> PIL images, safely.

Sizes are checked before decoding (base64 length, header pixel count), and only PNG, JPEG and WebP
are ever opened.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
from urllib.parse import unquote_to_bytes

from PIL import Image as PILImage
from PIL import ImageOps, UnidentifiedImageError
from PIL.Image import Image

from ..redact import loggable
from .codecs import DEFAULT_PNG_COMPRESS_LEVEL

# Input images: the formats Pillow may open for a request (nothing else is even attempted).
INPUT_FORMATS = ("PNG", "JPEG", "WEBP")
_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"RIFF")
_DATA_URL = re.compile(r"data:(?P<mime>[^,;]*)(?P<params>(?:;[^,;]*)*),(?P<data>.*)", re.DOTALL | re.IGNORECASE)


class MediaError(ValueError):
    """Input bytes or text that cannot be used; the message says why, for the client."""


def is_data_url(text: str) -> bool:
    """Whether `text` is a data: URL."""
    return text[:5].lower() == "data:"


def _max_base64_chars(max_bytes: int) -> int:
    return (max_bytes + 2) // 3 * 4


def decode_base64(text: str, max_bytes: int) -> bytes:
    """Standard base64 (whitespace allowed, as `base64` wraps lines) to bytes, at most `max_bytes`."""
    compact = "".join(text.split())
    if len(compact) > _max_base64_chars(max_bytes):
        raise MediaError(f"holds more than the limit of {max_bytes} bytes")
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise MediaError("is not valid base64 (nor a data URL)") from None


def decode_data_url(text: str, max_bytes: int) -> bytes:
    """The bytes of a `data:[image/...][;base64],...` URL, at most `max_bytes`."""
    match = _DATA_URL.fullmatch(text.strip())
    if match is None:
        raise MediaError("is not a valid data URL (data:image/png;base64,...)")
    mime = match["mime"].strip().lower()
    if mime and not mime.startswith("image/"):
        raise MediaError(f"data URL media type must be image/png, image/jpeg or image/webp, got {loggable(mime)!r}")
    if any(p.strip().lower() == "base64" for p in match["params"].split(";")):
        return decode_base64(match["data"], max_bytes)
    data = unquote_to_bytes(match["data"])
    if len(data) > max_bytes:
        raise MediaError(f"holds more than the limit of {max_bytes} bytes")
    return data


def looks_like_image_file(data: bytes) -> bool:
    """Whether `data` starts like a PNG, JPEG or WebP file."""
    return data.startswith(_MAGIC)


def decode_inline(value: str | bytes, max_bytes: int) -> bytes:
    """Image file bytes from an inline value: a data URL, base64 text, or (v2 BYTES) the raw file."""
    if isinstance(value, bytes):
        if looks_like_image_file(value):
            if len(value) > max_bytes:
                raise MediaError(f"is {len(value)} bytes, more than the limit of {max_bytes}")
            return value
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            raise MediaError("is neither a PNG, JPEG or WebP file nor base64 text") from None
    return decode_data_url(value, max_bytes) if is_data_url(value) else decode_base64(value, max_bytes)


def open_image(data: bytes, mode: str, max_pixels: int) -> Image:
    """Decode PNG/JPEG/WebP bytes (first frame), EXIF orientation applied, converted to `mode`.

    The pixel count is checked from the header before any pixel is decoded (decompression bombs).
    """
    try:
        image = PILImage.open(io.BytesIO(data), formats=INPUT_FORMATS)
    except UnidentifiedImageError:
        raise MediaError("is not a PNG, JPEG or WebP image") from None
    except PILImage.DecompressionBombError:
        raise MediaError(f"has more than the limit of {max_pixels} pixels") from None
    width, height = image.size
    if width * height > max_pixels:
        raise MediaError(f"is {width}x{height} = {width * height} pixels, more than the limit of {max_pixels}")
    try:
        image.load()
        return ImageOps.exif_transpose(image).convert(mode)
    except (OSError, SyntaxError, ValueError) as exc:
        raise MediaError(f"could not be decoded as {image.format} ({exc})") from None


def header_pixels(data: bytes) -> int | None:
    """Width x height from a PNG, JPEG or WebP header (no pixel decoded); None when it cannot be read."""
    try:
        with PILImage.open(io.BytesIO(data), formats=INPUT_FORMATS) as image:
            width, height = image.size
    except (OSError, SyntaxError, ValueError, UnidentifiedImageError, PILImage.DecompressionBombError):
        return None
    return width * height


def transparent_mask(data: bytes, max_pixels: int) -> bytes | None:
    """OpenAI's mask convention (fully transparent pixels are repainted) as our white-on-black PNG mask;
    None when the image has no fully transparent pixel or cannot be read (it is then used as it is)."""
    try:
        image = PILImage.open(io.BytesIO(data), formats=INPUT_FORMATS)
        width, height = image.size
        if width * height > max_pixels or not (image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info):
            return None
        alpha = image.convert("RGBA").getchannel("A")
    except (OSError, SyntaxError, ValueError, UnidentifiedImageError, PILImage.DecompressionBombError):
        return None
    if alpha.getextrema()[0] != 0:
        return None
    mask = alpha.point(lambda value: 255 if value == 0 else 0)
    buffer = io.BytesIO()
    mask.save(buffer, format="PNG", compress_level=DEFAULT_PNG_COMPRESS_LEVEL)
    return buffer.getvalue()
