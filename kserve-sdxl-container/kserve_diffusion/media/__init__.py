"""Media in and out: output codecs, safe decoding of input images, and safe image URL downloads."""

from .codecs import (
    DEFAULT_PNG_COMPRESS_LEVEL,
    DEFAULT_QUALITY,
    MIME_TYPES,
    Encoding,
    Video,
    content_type,
    data_url,
    encode_image,
    encode_video,
    to_base64,
)
from .decode import (
    INPUT_FORMATS,
    MediaError,
    decode_base64,
    decode_data_url,
    decode_inline,
    header_pixels,
    is_data_url,
    looks_like_image_file,
    open_image,
    transparent_mask,
)

__all__ = [
    "DEFAULT_PNG_COMPRESS_LEVEL",
    "DEFAULT_QUALITY",
    "INPUT_FORMATS",
    "MIME_TYPES",
    "Encoding",
    "MediaError",
    "Video",
    "content_type",
    "data_url",
    "decode_base64",
    "decode_data_url",
    "decode_inline",
    "encode_image",
    "encode_video",
    "header_pixels",
    "is_data_url",
    "looks_like_image_file",
    "open_image",
    "to_base64",
    "transparent_mask",
]
