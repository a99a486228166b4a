"""Output codecs: PIL images -> PNG/JPEG/WebP files, video frames -> MP4/GIF/WebP, base64 and data URLs."""

from __future__ import annotations

import base64
import io
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
from PIL import Image as PILImage
from PIL.Image import Image

# imageio-ffmpeg starts ffmpeg with preexec_fn=os.setpgrp (to keep Ctrl-C from it), which makes Python fork()
# instead of vfork(): gRPC's fork handlers then run in the child while the server's gRPC threads are busy
# ("skipping fork() handlers", "epoll_wait error: Bad file descriptor") and the child sometimes died before
# running ffmpeg - a broken pipe that failed about one video in fifty under load. Without preexec_fn the child
# is spawned without fork handlers; a server has no terminal whose Ctrl-C could reach ffmpeg.
os.environ.setdefault("IMAGEIO_FFMPEG_NO_PREVENT_SIGINT", "1")

IMAGE_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}  # output format -> Pillow format
MIME_TYPES = {
    "png": "image/png",
    "jpeg": "image/jpeg",
    "webp": "image/webp",
    "mp4": "video/mp4",
    "gif": "image/gif",
}
DEFAULT_QUALITY = 90
DEFAULT_PNG_COMPRESS_LEVEL = 1  # zlib level: about 3-6x faster than Pillow's 6 for 7-18% more bytes (docs/api.md)
# WebP encoder effort 0 of 6: about 3x faster than Pillow's 4 for about 4% more bytes at the same quality.
WEBP_METHOD = 0
_ANIMATED = {"gif": "GIF", "webp": "WEBP"}  # video formats Pillow writes


@dataclass(frozen=True)
class Video:
    """Generated frames (F, H, W, 3 uint8) and the rate they are played at."""

    frames: np.ndarray
    fps: int

    @property
    def duration_seconds(self) -> float:
        """How long the video plays."""
        return len(self.frames) / self.fps


@dataclass(frozen=True)
class Encoding:
    """How to write a generated file: its format and the knobs of that format."""

    output_format: str = "png"
    quality: int = DEFAULT_QUALITY  # JPEG and WebP, 0-100
    png_compress_level: int = DEFAULT_PNG_COMPRESS_LEVEL  # zlib 0-9

    def pillow_options(self) -> dict[str, int]:
        """Pillow `save` keyword arguments for this encoding."""
        if self.output_format == "png":
            return {"compress_level": self.png_compress_level}
        if self.output_format == "webp":
            return {"quality": self.quality, "method": WEBP_METHOD}
        if self.output_format == "jpeg":
            return {"quality": self.quality}
        return {}


def encode_image(image: Image, encoding: Encoding = Encoding()) -> bytes:
    """The image as a file in `encoding`'s format."""
    buffer = io.BytesIO()
    image.save(buffer, format=IMAGE_FORMATS[encoding.output_format], **encoding.pillow_options())
    return buffer.getvalue()


def encode_video(video: Video, encoding: Encoding = Encoding("mp4")) -> bytes:
    """The video as an MP4 (H.264, yuv420p, +faststart: plays in browsers) or an animated GIF/WebP."""
    if encoding.output_format in _ANIMATED:
        pictures = [PILImage.fromarray(frame) for frame in video.frames]
        buffer = io.BytesIO()
        duration_ms = round(1000 / video.fps)
        pictures[0].save(
            buffer,
            format=_ANIMATED[encoding.output_format],
            save_all=True,
            append_images=pictures[1:],
            duration=duration_ms,
            loop=0,
            **encoding.pillow_options(),
        )
        return buffer.getvalue()
    # ffmpeg needs a seekable file for +faststart (the index moved to the front).
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "video.mp4"
        writer = imageio.get_writer(
            path,
            format="FFMPEG",
            fps=video.fps,
            codec="libx264",
            pixelformat="yuv420p",
            output_params=["-movflags", "+faststart"],
            macro_block_size=16,
            ffmpeg_log_level="error",
        )
        try:
            for frame in video.frames:
                writer.append_data(frame)
        finally:
            writer.close()
        return path.read_bytes()


def content_type(output_format: str = "png") -> str:
    """The MIME type of `output_format`."""
    return MIME_TYPES[output_format]


def to_base64(data: bytes) -> str:
    """Standard base64 text of `data`."""
    return base64.b64encode(data).decode("ascii")


def data_url(data: bytes, mime: str) -> str:
    """`data` as a data: URL."""
    return f"data:{mime};base64,{to_base64(data)}"
