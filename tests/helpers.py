"""Decoding helpers for the tests."""

from __future__ import annotations

import asyncio
import base64
import io
import tempfile
from pathlib import Path

import httpx
import imageio.v2 as imageio
import numpy as np
from kserve import InferenceGRPCClient
from kserve.protocol.infer_type import InferRequest, InferResponse
from PIL import Image, ImageSequence


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


def as_data_url(data: bytes, mime: str = "image/png") -> str:
    """File bytes as a base64 data URL."""
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def predict(http: httpx.Client, *instances: dict, model: str = "sdxl") -> httpx.Response:
    """POST a v1 predict (to the demo's model name unless told)."""
    return http.post(f"/v1/models/{model}:predict", json={"instances": list(instances)})


def only_image(response: httpx.Response) -> tuple[dict, Image.Image, bytes]:
    """(prediction, image, PNG bytes) of a successful single-image v1 answer."""
    assert response.status_code == 200, response.text
    (prediction,) = response.json()["predictions"]
    (url,) = prediction["images"]
    mime, data = decode_data_url(url)
    assert mime == "image/png"
    return prediction, open_image(data), data


def grpc_infer(target: str, request: InferRequest, timeout: float = 300) -> InferResponse:
    """One v2 gRPC inference with KServe's client, run to completion."""

    async def call() -> InferResponse:
        client = InferenceGRPCClient(target, timeout=timeout)
        try:
            return await client.infer(request)
        finally:
            await client.close()

    return asyncio.run(call())


def small(**fields: object) -> dict:
    """A cheap text2img instance for the tiny model."""
    return {"prompt": "a red fox", "height": 64, "width": 64, "num_inference_steps": 2, **fields}


def mp4_facts(data: bytes) -> tuple[np.ndarray, dict]:
    """(frames, ffmpeg metadata) of MP4 bytes, decoded by imageio-ffmpeg."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "video.mp4"
        path.write_bytes(data)
        reader = imageio.get_reader(path, format="FFMPEG")
        try:
            return np.stack([frame for frame in reader.iter_data()]), reader.get_meta_data()
        finally:
            reader.close()


def pixels_of(data: bytes) -> bytes:
    """The pixels of an image, animation (every frame) or MP4 (every decoded frame): what the same seed must
    repeat when the files' bytes differ (each file signed with its own C2PA credentials)."""
    if data[4:8] == b"ftyp":
        return mp4_facts(data)[0].tobytes()
    with Image.open(io.BytesIO(data)) as picture:
        return b"".join(frame.convert("RGB").tobytes() for frame in ImageSequence.Iterator(picture))
