"""Encoding cost: milliseconds per 1024x1024 image (PNG fast and default levels, JPEG, WebP) and per
81-frame 832x480 MP4, through the server's own encoders on a smooth synthetic picture."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import numpy as np
from kserve_diffusion import media
from PIL import Image


def photo_like(width: int, height: int, seed: int = 0) -> Image.Image:
    """A smooth, detailed picture (1/f noise in four octaves, fine grain): it compresses like a generated
    image, unlike the random-weight models' noise."""
    rng = np.random.default_rng(seed)
    picture = np.zeros((height, width, 3), np.float32)
    for cells, amplitude in ((4, 1.0), (16, 0.5), (64, 0.25), (256, 0.12)):
        layer = Image.fromarray((rng.random((cells, cells, 3)) * 255).astype(np.uint8))
        picture += amplitude * (np.asarray(layer.resize((width, height), Image.Resampling.BICUBIC), np.float32) - 127.5)
    picture = 127.5 + picture / 1.87 + rng.normal(0, 1.0, picture.shape)
    return Image.fromarray(np.clip(picture, 0, 255).astype(np.uint8))


def moving_frames(frames: int, width: int, height: int) -> np.ndarray:
    """`frames` frames panning across a larger photo-like picture (motion, as a video has)."""
    scene = np.asarray(photo_like(width + 2 * frames, height, seed=1))
    return np.stack([scene[:, 2 * index : 2 * index + width] for index in range(frames)])


def _median_ms(encode: Callable[[], bytes], repeats: int) -> tuple[float, int]:
    times, size = [], 0
    for _ in range(repeats):
        started = time.perf_counter()
        size = len(encode())
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), size


def measure(repeats: int = 5) -> list[dict[str, object]]:
    """One row per encoding: name, median milliseconds and the file's bytes."""
    image = photo_like(1024, 1024)
    cases: list[tuple[str, Callable[[], bytes], int]] = [
        (
            "PNG level 1 (default)",
            lambda: media.encode_image(image, media.Encoding("png", png_compress_level=1)),
            repeats,
        ),
        (
            "PNG level 6 (Pillow default)",
            lambda: media.encode_image(image, media.Encoding("png", png_compress_level=6)),
            repeats,
        ),
        ("JPEG quality 90", lambda: media.encode_image(image, media.Encoding("jpeg")), repeats),
        ("WebP quality 90", lambda: media.encode_image(image, media.Encoding("webp")), repeats),
    ]
    video = media.Video(moving_frames(81, 832, 480), fps=16)
    cases.append(
        ("MP4 81 frames 832x480", lambda: media.encode_video(video, media.Encoding("mp4")), max(1, repeats // 2))
    )
    rows = []
    for name, encode, count in cases:
        milliseconds, size = _median_ms(encode, count)
        rows.append({"encoding": name, "ms": round(milliseconds, 1), "bytes": size})
    return rows
