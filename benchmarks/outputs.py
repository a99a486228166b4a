"""Answers with the files inline (b64_json) against answers as presigned URLs (url), in one server and one run.

One server with the tiny SDXL and the tiny Wan beside it and `--output_store` on a `moto_server` process (an
S3 API over real HTTP, started here): four 1024x1024 PNGs in one request, and one MP4. Each url request is
paired with the same b64_json request (same seed, same files), alternately; the ratio is the median of the
pairs' ratios (a pair sees the same drift of this shared VM; the video's pairs are twice as many, its
generation being short and noisy here); the server's own upload time comes from its metrics. Time is end to
end: sent to answer parsed (a client then fetches the files from the store itself; shown apart). Goal: url
<= 1.05 x b64_json, and a url answer under 2 KB.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from kserve_diffusion.testing import tiny

from benchmarks.serving import Plan, Server, _free_port

IMAGES = {"prompt": "a red fox", "height": 1024, "width": 1024, "num_images": 4, "num_inference_steps": 1}
VIDEO = {
    "prompt": "a red fox running",
    "task_type": "text2video",
    "video_width": 384,
    "video_height": 384,
    "num_frames": 17,
    "num_inference_steps": 2,
}
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}


def _moto() -> tuple[subprocess.Popen[bytes], str] | None:
    binary = Path(sys.executable).with_name("moto_server")
    found = str(binary) if binary.exists() else shutil.which("moto_server")
    if found is None:
        return None
    port = _free_port()
    process = subprocess.Popen(
        [found, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            httpx.put(f"{endpoint}/results", timeout=1).raise_for_status()  # moto: create the bucket
            return process, endpoint
        except httpx.HTTPError:
            time.sleep(0.1)
    process.terminate()
    raise RuntimeError("moto_server did not start")


def _timed(client: httpx.Client, instance: dict[str, Any]) -> tuple[float, int, list[str]]:
    """(seconds from sending to the parsed answer, answer bytes, the files as the answer shows them)."""
    started = time.perf_counter()
    answer = client.post("/v1/models/sdxl:predict", json={"instances": [instance]})
    answer.raise_for_status()
    [prediction] = answer.json()["predictions"]
    seconds = time.perf_counter() - started
    return seconds, len(answer.content), prediction.get("images") or [prediction["video"]]


def _uploads(client: httpx.Client) -> tuple[float, float]:
    """The server's output_upload_seconds histogram so far: (count, sum)."""
    values = {}
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("kserve_diffusion_output_upload_seconds_"):
            name, value = line.split()
            values[name.rsplit("_", 1)[-1]] = float(value)
    return values.get("count", 0.0), values.get("sum", 0.0)


def _fetch(urls: list[str]) -> float:
    started = time.perf_counter()
    for url in urls:
        httpx.get(url, timeout=60).raise_for_status()
    return time.perf_counter() - started


def measure(plan: Plan) -> list[dict[str, Any]]:
    """One row per kind of answer (4 images, a video); none without moto_server or in --quick."""
    if plan.sizes[0] < 256:
        return []
    moto = _moto()
    if moto is None:
        return []
    process, endpoint = moto
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        model = tiny.write("sdxl", Path(folder) / "sdxl")
        video_model = tiny.write("wan", Path(folder) / "wan")
        flags = ("--video_model_id", str(video_model), "--output_store", "s3://results/bench")
        server = Server(model, *flags, env={**CREDENTIALS, "AWS_ENDPOINT_URL": endpoint})
        try:
            with httpx.Client(base_url=server.url, timeout=600) as client:
                # The video's generation is short and noisy on this VM: twice the pairs.
                cases = (("4 images, 1024x1024 PNG", IMAGES, 1), ("1 video, 17 frames 384x384 MP4", VIDEO, 2))
                for what, instance, more in cases:
                    uploads = _uploads(client)
                    row = _pairs(client, what, instance, plan.repeats * more)
                    count, seconds = (now - before for now, before in zip(_uploads(client), uploads, strict=True))
                    row["server's upload ms (mean)"] = round(1000 * seconds / count, 1) if count else None
                    rows.append(row)
        finally:
            server.stop()
            process.terminate()
            process.wait(timeout=20)
    return rows


def _pairs(client: httpx.Client, what: str, instance: dict[str, Any], repeats: int) -> dict[str, Any]:
    _timed(client, {**instance, "seed": 0})  # warm-up
    _timed(client, {**instance, "seed": 0, "response_format": "url"})
    inline_times, url_times, ratios, fetches = [], [], [], []
    inline_bytes = url_bytes = 0
    for seed in range(1, repeats + 1):
        # Alternate which goes first, so neither always follows the other's upload or download.
        order = ("b64_json", "url") if seed % 2 else ("url", "b64_json")
        measured = {kind: _timed(client, {**instance, "seed": seed, "response_format": kind}) for kind in order}
        (inline, inline_bytes, _), (linked, url_bytes, urls) = measured["b64_json"], measured["url"]
        inline_times.append(inline)
        url_times.append(linked)
        ratios.append(linked / inline)
        fetches.append(_fetch(urls))
    return {
        "answer": what,
        "b64_json s (median)": round(statistics.median(inline_times), 3),
        "url s (median)": round(statistics.median(url_times), 3),
        "url / b64_json (goal <= 1.05)": round(statistics.median(ratios), 3),
        "b64_json answer bytes": inline_bytes,
        "url answer bytes (goal < 2048)": url_bytes,
        "client's fetch of the files s": round(statistics.median(fetches), 3),
    }
