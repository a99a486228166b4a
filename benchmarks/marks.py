"""The cost of marking outputs (--provenance c2pa,watermark): the invisible watermark and the signed C2PA
credentials on a 1024x1024 PNG and JPEG and an 81-frame 832x480 MP4, in ms and as a ratio to encoding alone
(in-process, the server's own code, on encoding.py's photo-like picture and panning frames); the watermark's
PSNR; then a 1024x1024 JPEG request end to end, marked against unmarked (`provenance: off`, allowed with
--allow_unmarked_requests), alternately with the same seeds, median of the pairs' ratios. Goal on a GPU:
marked <= 1.05 x unmarked at 30 steps; here the tiny SDXL on the CPU (a step costs far less than a GPU's
full-size step, so the ratio is a ceiling for the same marking cost).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from kserve_diffusion import media
from kserve_diffusion.marks import watermark
from kserve_diffusion.marks.marker import open_marks
from kserve_diffusion.testing import tiny

from benchmarks.encoding import moving_frames, photo_like
from benchmarks.serving import Plan, Server

REQUEST = {"prompt": "a red fox", "height": 1024, "width": 1024, "output_format": "jpeg"}


def _median_ms(work: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def _psnr(reference: np.ndarray, other: np.ndarray) -> float:
    error = np.mean((reference.astype(np.float64) - other.astype(np.float64)) ** 2)
    return float(10 * np.log10(255**2 / error))


def files(repeats: int, side: int = 1024, frames: int = 81) -> list[dict[str, Any]]:
    """Per file kind: encoding alone, watermark, signing, all marks, in ms; marked / encoding alone."""
    marks = open_marks("c2pa,watermark", None, None)
    marking = marks.marking(marks.marks, "sdxl", "sdxl", "text2img", 0)
    image = photo_like(side, side)
    video = media.Video(moving_frames(frames, 832, 480), fps=16)
    rows = []
    for kind, output_format in (("PNG", "png"), ("JPEG", "jpeg")):
        name, count = f"{kind} {side}x{side}", repeats
        encoding = media.Encoding(output_format)
        encoded = media.encode_image(image, encoding)
        alone = _median_ms(lambda encoding=encoding: media.encode_image(image, encoding), count)
        marked_pixels = watermark.watermarked(np.asarray(image))
        rows.append(
            _row(
                name,
                alone,
                _median_ms(lambda: watermark.watermarked(np.asarray(image)), count),
                _median_ms(lambda encoded=encoded, f=output_format: marking.file(encoded, f), count),
                _psnr(np.asarray(image), marked_pixels),
                len(marking.file(encoded, output_format)) - len(encoded),
            )
        )
    encoding = media.Encoding("mp4")
    encoded = media.encode_video(video, encoding)
    count = max(1, repeats // 3)
    marked_frames = marking.frames(video.frames)
    rows.append(
        _row(
            f"MP4 {frames} frames 832x480",
            _median_ms(lambda: media.encode_video(video, encoding), count),
            _median_ms(lambda: marking.frames(video.frames), count),
            _median_ms(lambda: marking.file(encoded, "mp4"), count),
            _psnr(video.frames, marked_frames),
            len(marking.file(encoded, "mp4")) - len(encoded),
        )
    )
    return rows


def _row(name: str, alone: float, marked: float, signed: float, psnr: float, extra: int) -> dict[str, Any]:
    return {
        "file": name,
        "encoding alone ms": round(alone, 1),
        "watermark ms": round(marked, 1),
        "C2PA signing ms": round(signed, 1),
        "marked / encoding alone": round((alone + marked + signed) / alone, 2),
        "watermark PSNR dB": round(psnr, 1),
        "credentials bytes": extra,
    }


def _seconds(client: httpx.Client, fields: dict[str, Any]) -> float:
    started = time.perf_counter()
    response = client.post("/v1/models/sdxl:predict", json={"instances": [fields]})
    response.raise_for_status()
    return time.perf_counter() - started


def end_to_end(plan: Plan) -> dict[str, Any]:
    """A 1024x1024 JPEG request marked and unmarked, alternately; the median of the pairs' ratios."""
    steps = plan.steps  # 4: the tiny UNet takes about 2 s a step at 1024x1024 here; the GPU goal is at 30
    size = 1024 if plan.sizes[-1] >= 1024 else plan.sizes[0]
    request = {**REQUEST, "height": size, "width": size, "num_inference_steps": steps}
    with tempfile.TemporaryDirectory() as folder:
        server = Server(tiny.write("sdxl", Path(folder) / "sdxl"), "--provenance", "c2pa,watermark",
                        "--allow_unmarked_requests", "true")  # fmt: skip
        try:
            with httpx.Client(base_url=server.url, timeout=900) as client:
                _seconds(client, {**request, "seed": 0})  # warm-up
                marked_times, plain_times, ratios = [], [], []
                for seed in range(1, plan.repeats + 1):
                    order = ("marked", "off") if seed % 2 else ("off", "marked")
                    times = {}
                    for kind in order:
                        fields = {**request, "seed": seed, **({"provenance": "off"} if kind == "off" else {})}
                        times[kind] = _seconds(client, fields)
                    marked_times.append(times["marked"])
                    plain_times.append(times["off"])
                    ratios.append(times["marked"] / times["off"])
        finally:
            server.stop()
    marked, plain = statistics.median(marked_times), statistics.median(plain_times)
    return {
        "file": f"request: {size}x{size} JPEG, {steps} steps, end to end",
        "unmarked s": round(plain, 2),
        "marked s": round(marked, 2),
        "marked - unmarked ms": round(1000 * (marked - plain)),
        "marked / unmarked (goal on a GPU <= 1.05)": round(statistics.median(ratios), 3),
    }


def measure(plan: Plan) -> dict[str, list[dict[str, Any]]]:
    """The per-file rows ("files") and the end-to-end row ("request")."""
    full = plan.sizes[-1] >= 1024  # --quick: small pictures and a short video
    return {
        "files": files(max(1, plan.repeats), 1024 if full else 256, 81 if full else 9),
        "request": [end_to_end(plan)],
    }
