"""Wan2.1 text-to-video: MP4/GIF/WebP answers, the combined image + video endpoint, start-video.sh."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from kserve.protocol.infer_type import InferInput, InferRequest
from PIL import Image

from tests.conftest import ROOT, STARTUP_TIMEOUT, VENV_PATH, ServerProcess
from tests.helpers import decode_data_url, grpc_infer, mp4_facts, only_image, predict

CLIP = {
    "task_type": "text2video",
    "prompt": "a fox running",
    "video_height": 64,
    "video_width": 96,
    "num_frames": 9,
    "num_inference_steps": 2,
}


def clip(**fields: object) -> dict:
    """A cheap text2video instance for the tiny Wan."""
    return {**CLIP, **fields}


@pytest.fixture(scope="module")
def video(video_server: ServerProcess) -> Iterator[httpx.Client]:
    """An httpx client for the combined SDXL + Wan server."""
    with httpx.Client(base_url=video_server.url, timeout=300) as http:
        yield http


def only_video(response: httpx.Response) -> tuple[dict, str, bytes]:
    """(prediction, mime type, file bytes) of a one-video v1 answer."""
    assert response.status_code == 200, response.text
    (prediction,) = response.json()["predictions"]
    mime, data = decode_data_url(prediction["video"])
    return prediction, mime, data


def test_mp4_has_the_requested_frames_size_and_rate(video: httpx.Client) -> None:
    prediction, mime, data = only_video(predict(video, clip(fps=12, seed=5)))
    assert mime == "video/mp4" and prediction["task_type"] == "text2video" and prediction["seed"] == 5
    facts = {key: prediction[key] for key in ("num_frames", "fps", "width", "height", "duration_seconds")}
    assert facts == {"num_frames": 9, "fps": 12, "width": 96, "height": 64, "duration_seconds": 0.75}
    frames, meta = mp4_facts(data)
    assert frames.shape == (9, 64, 96, 3)
    assert meta["fps"] == 12 and meta["codec"] == "h264" and meta["pix_fmt"].startswith("yuv420p")
    assert data.index(b"moov") < data.index(b"mdat")  # +faststart: playable while downloading


@pytest.mark.parametrize("output_format", ["gif", "webp"])
def test_animated_gif_and_webp(video: httpx.Client, output_format: str) -> None:
    prediction, mime, data = only_video(predict(video, clip(output_format=output_format, fps=10)))
    assert mime == f"image/{output_format}"
    animation = Image.open(io.BytesIO(data))
    assert animation.format == output_format.upper() and animation.size == (96, 64)
    animation.load()  # WebP reports a frame's duration once it is decoded
    assert animation.n_frames == 9 and animation.info["duration"] == 100


def test_same_seed_same_frames(video: httpx.Client) -> None:
    first = only_video(predict(video, clip(seed=9, output_format="gif")))[2]
    again = only_video(predict(video, clip(seed=9, output_format="gif")))[2]
    other = only_video(predict(video, clip(seed=10, output_format="gif")))[2]
    assert first == again and first != other
    mp4_a, mp4_b = (mp4_facts(only_video(predict(video, clip(seed=9)))[2])[0] for _ in range(2))
    assert np.array_equal(mp4_a, mp4_b)


def test_one_endpoint_serves_images_and_videos(video: httpx.Client) -> None:
    image_request = {"prompt": "a fox", "height": 64, "width": 64, "num_inference_steps": 2}
    prediction, image, _ = only_image(predict(video, image_request))  # no task_type: text2img
    assert prediction["task_type"] == "text2img" and image.size == (64, 64)
    answer = predict(video, clip(), {**image_request, "task_type": "text2img"})
    assert [p["task_type"] for p in answer.json()["predictions"]] == ["text2video", "text2img"]
    # fields of the other kind are pointed out, not silently ignored
    answer = predict(video, {**CLIP, "task_type": None})
    assert answer.status_code == 400
    assert (
        'video_height: applies to text2video and img2video only (send "task_type": "text2video" or "img2video")'
        in answer.json()["error"]
    )
    answer = predict(video, clip(height=64))
    assert answer.json()["error"] == "height: does not apply to text2video (use video_height), got 64"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"num_frames": 27},
            "num_frames: Wan needs 4k+1 frames (1, 5, 9, ..., 81): the nearest valid counts are 25 or 29",
        ),
        ({"num_frames": 3}, "nearest valid counts are 1 or 5, got 3"),
        ({"num_frames": 85}, "num_frames: must be between 1 and 81, got 85"),
        ({"video_width": 100}, "video_width: must be a multiple of 16 (e.g. 96 or 112), got 100"),
        ({"video_height": 4096}, "video_height: must be between 64 and 2048, got 4096"),
        ({"num_frames": 81, "video_width": 2048, "video_height": 2048}, "num_frames x video_width x video_height"),
        ({"video_guidance_scale": 25}, "video_guidance_scale: must be >= 1 and <= 20, got 25"),
        ({"fps": 60}, "fps: must be >= 6 and <= 30, got 60"),
        ({"output_format": "png"}, "output_format: text2video answers with mp4, gif, webp, got 'png'"),
        ({"num_images": 2}, "num_images: text2video makes one video per request"),
        ({"high_noise_frac": 0.5}, "high_noise_frac: applies to SDXL only, not Wan video, got 0.5"),
        (
            {"scheduler": "DDIM"},
            "scheduler: must be one of UniPC (DDIM is a scheduler of SDXL; it does not apply to Wan video)",
        ),
    ],
)
def test_bad_video_requests_are_400s(video: httpx.Client, fields: dict, message: str) -> None:
    answer = predict(video, clip(**fields))
    assert answer.status_code == 400, answer.text
    assert message in answer.json()["error"], answer.json()["error"]


def test_image_output_format_is_checked(video: httpx.Client) -> None:
    answer = predict(video, {"prompt": "a fox", "output_format": "mp4"})
    assert (
        answer.status_code == 400 and "output_format: text2img answers with png, jpeg, webp, got 'mp4'" in answer.text
    )


def test_v2_rest_answers_a_video_tensor(video: httpx.Client) -> None:
    parameters = {key: value for key, value in clip(seed=3).items() if key != "prompt"}
    body = {
        "inputs": [{"name": "prompt", "shape": [1], "datatype": "BYTES", "data": ["a fox"]}],
        "parameters": parameters,
    }
    answer = video.post("/v2/models/sdxl/infer", json=body)
    assert answer.status_code == 200, answer.text
    result = answer.json()
    outputs = {output["name"]: output for output in result["outputs"]}
    assert outputs["video"]["shape"] == [1] and outputs["video"]["parameters"]["content_type"] == "video/mp4"
    parameters = {key: result["parameters"][key] for key in ("task_type", "num_frames", "fps", "width", "height")}
    assert parameters == {"task_type": "text2video", "num_frames": 9, "fps": 8, "width": 96, "height": 64}
    frames, _ = mp4_facts(base64.b64decode(outputs["video"]["data"][0]))
    assert frames.shape == (9, 64, 96, 3)
    metadata = video.get("/v2/models/sdxl").json()
    assert {"name": "video", "datatype": "BYTES", "shape": [1]} in metadata["outputs"]


def test_grpc_answers_a_video_tensor(video_server: ServerProcess) -> None:
    prompt = InferInput("prompt", [1], "BYTES", data=[b"a fox"])
    parameters = {**{k: v for k, v in CLIP.items() if k != "prompt"}, "output_format": "gif"}
    request = InferRequest(model_name="sdxl", infer_inputs=[prompt], parameters=parameters)

    response = grpc_infer(video_server.grpc_target, request)
    (output,) = [o for o in response.outputs if o.name == "video"]
    assert output.parameters["content_type"].string_param == "image/gif"
    assert Image.open(io.BytesIO(base64.b64decode(output.as_numpy()[0]))).n_frames == 9


# --- video only, launched by start-video.sh ---


@pytest.fixture(scope="module")
def script_server(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """start-video.sh as written: the model path, device and name overridden, the ports passed through."""
    env = {
        "MODEL_ID": str(tiny_models["wan"]),
        "DEVICE": "cpu",
        "MODEL_NAME": "sdxl",  # the name ServerProcess waits for
        "PATH": VENV_PATH,
    }
    log = tmp_path_factory.mktemp("logs") / "start-video.log"
    server = ServerProcess([], log, env=env, launcher=[str(ROOT / "start-video.sh")]).wait_ready(STARTUP_TIMEOUT)
    yield server
    server.stop()


def test_start_video_script_serves_video_only(script_server: ServerProcess) -> None:
    with httpx.Client(base_url=script_server.url, timeout=300) as http:
        prediction, mime, _ = only_video(predict(http, clip(task_type=None)))  # no task_type: text2video
        assert prediction["task_type"] == "text2video" and mime == "video/mp4"
        answer = predict(http, {"prompt": "a fox", "task_type": "text2img"})
        assert answer.status_code == 400
        assert answer.json()["error"] == "task_type: this server serves text2video, got 'text2img'"


# --- units ---
