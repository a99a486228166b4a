"""Output formats (png, jpeg, webp + quality) on every protocol, and binary v2 outputs (REST binary tensor
extension with tritonclient and raw httpx; gRPC raw contents)."""

from __future__ import annotations

import base64
import json
import struct

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient
from kserve.protocol.infer_type import InferInput, InferRequest

from tests.conftest import ServerProcess
from tests.helpers import decode_data_url, grpc_infer, open_image, predict, small

INFER = "/v2/models/sdxl/infer"
MAGIC = {"png": b"\x89PNG\r\n\x1a\n", "jpeg": b"\xff\xd8\xff", "webp": b"RIFF"}


@pytest.mark.parametrize("output_format", ["png", "jpeg", "webp"])
def test_v1_output_formats(client: httpx.Client, output_format: str) -> None:
    answer = predict(client, small(seed=3, output_format=output_format))
    assert answer.status_code == 200, answer.text
    mime, data = decode_data_url(answer.json()["predictions"][0]["images"][0])
    assert mime == f"image/{output_format}" and data.startswith(MAGIC[output_format])
    image = open_image(data)
    assert (image.format, image.size, image.mode) == (output_format.upper(), (64, 64), "RGB")


def test_quality_changes_lossy_files_and_is_refused_for_png(client: httpx.Client) -> None:
    def size(quality: int, output_format: str = "jpeg") -> int:
        answer = predict(client, small(seed=3, height=128, width=128, output_format=output_format, quality=quality))
        return len(decode_data_url(answer.json()["predictions"][0]["images"][0])[1])

    assert size(0) < size(10) < size(95)
    assert size(10, "webp") < size(95, "webp")
    for fields, words in [
        ({"quality": 80}, "quality: applies to jpeg and webp output only, not png, got 80"),
        ({"output_format": "jpeg", "quality": 101}, "quality: must be >= 0 and <= 100, got 101"),
        ({"output_format": "jpg"}, "output_format: must be one of 'png', 'jpeg', 'webp', 'mp4' or 'gif'"),
    ]:
        answer = predict(client, small(**fields))
        assert answer.status_code == 400 and words in answer.json()["error"], answer.text


def test_v2_content_type_follows_the_format(client: httpx.Client) -> None:
    body = {"inputs": [], "parameters": {**small(seed=2), "output_format": "webp", "quality": 70}}
    answer = client.post(INFER, json=body).json()
    images = answer["outputs"][0]
    assert images["parameters"]["content_type"] == "image/webp"
    assert open_image(base64.b64decode(images["data"][0])).format == "WEBP"


def test_grpc_output_format(base_server: ServerProcess) -> None:
    prompt = InferInput("prompt", [1], "BYTES")
    prompt.set_data_from_numpy(np.array([b"a red fox"], dtype=object), binary_data=False)
    parameters = {"height": 64, "width": 64, "num_inference_steps": 2, "output_format": "jpeg", "quality": 60}
    response = grpc_infer(base_server.grpc_target, InferRequest("sdxl", [prompt], parameters=parameters))
    images = next(output for output in response.outputs if output.name == "images")
    assert images.parameters["content_type"].string_param == "image/jpeg"
    assert open_image(base64.b64decode(images.as_numpy()[0])).format == "JPEG"


# --- binary v2 outputs ---


def _prompt(binary: bool = True) -> httpclient.InferInput:
    prompt = httpclient.InferInput("prompt", [1], "BYTES")
    prompt.set_data_from_numpy(np.array([b"a red fox"], dtype=object), binary_data=binary)
    return prompt


PARAMETERS = {"height": 64, "width": 64, "num_inference_steps": 2, "seed": 21}


def test_tritonclient_binary_outputs_are_the_raw_files(base_server: ServerProcess, client: httpx.Client) -> None:
    triton = httpclient.InferenceServerClient(base_server.url.removeprefix("http://"))
    requested = [httpclient.InferRequestedOutput(name, binary_data=True) for name in ("images", "seed")]
    result = triton.infer("sdxl", [_prompt()], parameters={**PARAMETERS, "num_images": 2}, outputs=requested)
    files = result.as_numpy("images")
    assert files.shape == (2,) and all(file.startswith(MAGIC["png"]) for file in files)
    assert result.as_numpy("seed").tolist() == [21]
    output = result.get_output("images")
    assert output["parameters"]["content_type"] == "image/png" and output["parameters"]["binary_data_size"] > 0
    v1 = predict(client, {"prompt": "a red fox", **PARAMETERS, "num_images": 2}).json()
    assert list(files) == [decode_data_url(url)[1] for url in v1["predictions"][0]["images"]]
    mixed = [
        httpclient.InferRequestedOutput("images", binary_data=True),
        httpclient.InferRequestedOutput("seed", binary_data=False),
    ]
    json_body = {"Content-Type": "application/json"}  # KServe reads a body without it as binary
    result = triton.infer("sdxl", [_prompt(False)], parameters=PARAMETERS, outputs=mixed, headers=json_body)
    assert result.as_numpy("images")[0] == files[0]
    assert result.get_response()["outputs"][1]["data"] == [21]  # seed asked as JSON


def test_binary_data_output_with_plain_http(client: httpx.Client) -> None:
    body = {"inputs": [], "parameters": {"prompt": "a red fox", **PARAMETERS, "binary_data_output": True}}
    answer = client.post(INFER, json=body)
    assert answer.status_code == 200
    header_length = int(answer.headers["Inference-Header-Content-Length"])
    header = json.loads(answer.content[:header_length])
    images, seed = header["outputs"]
    assert "data" not in images and images["parameters"]["content_type"] == "image/png"
    raw = answer.content[header_length:]
    (length,) = struct.unpack("<I", raw[:4])  # BYTES elements are length-prefixed (little-endian uint32)
    assert length + 4 == images["parameters"]["binary_data_size"]
    assert raw[4 : 4 + length].startswith(MAGIC["png"])
    assert np.frombuffer(raw[4 + length :], dtype=np.int64).tolist() == [21]
    assert seed["parameters"]["binary_data_size"] == 8
    json_answer = client.post(INFER, json={"inputs": [], "parameters": {"prompt": "a red fox", **PARAMETERS}})
    assert base64.b64decode(json_answer.json()["outputs"][0]["data"][0]) == raw[4 : 4 + length]


def test_requested_unknown_output_is_400_before_generating(base_server: ServerProcess) -> None:
    triton = httpclient.InferenceServerClient(base_server.url.removeprefix("http://"))
    with pytest.raises(Exception, match="outputs: text2img answers with images and seed, got 'video'"):
        triton.infer("sdxl", [_prompt()], parameters=PARAMETERS, outputs=[httpclient.InferRequestedOutput("video")])


def test_binary_video_output_is_the_mp4(video_server: ServerProcess) -> None:
    triton = httpclient.InferenceServerClient(video_server.url.removeprefix("http://"))
    parameters = {"task_type": "text2video", "video_height": 64, "video_width": 64, "num_frames": 5}
    result = triton.infer("sdxl", [_prompt()], parameters={**parameters, "num_inference_steps": 2})
    (video,) = result.as_numpy("video")
    assert video[4:8] == b"ftyp" and result.get_output("video")["parameters"]["content_type"] == "video/mp4"
