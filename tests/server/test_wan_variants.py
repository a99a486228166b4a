"""Every Wan variant on a real server: Wan2.1 T2V (beside SDXL), Wan2.1 I2V, Wan2.2 T2V-A14B and I2V-A14B
alone, and Wan2.2 TI2V-5B beside SDXL as `make demo` serves it; img2video from data URLs, v2 binary input
and the OpenAI Videos API's input_reference."""

from __future__ import annotations

import io
from collections.abc import Iterator

import httpx
import numpy as np
import openai
import pytest
import tritonclient.http as httpclient
from PIL import Image

from tests.conftest import ServerProcess
from tests.helpers import as_data_url, decode_data_url, mp4_facts, pixels_of

# variant -> (server key, model name, tasks, size multiple)
VARIANTS = {
    "wan2.1-t2v": ("video", "sdxl", ("text2video",), 16),
    "wan2.1-i2v": ("wan2.1-i2v", "wan", ("img2video",), 16),
    "wan2.2-t2v-a14b": ("wan2.2-t2v-a14b", "wan", ("text2video",), 16),
    "wan2.2-i2v-a14b": ("wan2.2-i2v-a14b", "wan", ("img2video",), 16),
    "wan2.2-ti2v-5b": ("demo", "sdxl", ("text2video", "img2video"), 32),
}
CASES = [(variant, task) for variant, (_, _, tasks, _) in VARIANTS.items() for task in tasks]


def picture(width: int = 144, height: int = 96) -> bytes:
    """A PNG (3:2 by default) with a gradient (so the video has something to move)."""
    x = np.linspace(0, 255, width, dtype=np.uint8)
    pixels = np.stack([np.tile(x, (height, 1)), np.full((height, width), 90, np.uint8), np.tile(x[::-1], (height, 1))])
    buffer = io.BytesIO()
    Image.fromarray(pixels.transpose(1, 2, 0)).save(buffer, "PNG")
    return buffer.getvalue()


PICTURE = picture()


@pytest.fixture(scope="module")
def servers(wan_servers: dict[str, ServerProcess], video_server: ServerProcess) -> dict[str, ServerProcess]:
    """Each variant's server by key."""
    return {**wan_servers, "video": video_server}


class Variant:
    """A variant's server and a client for it."""

    def __init__(self, name: str, server: ServerProcess):
        _, self.model, self.tasks, self.multiple = VARIANTS[name]
        self.server = server
        self.http = httpx.Client(base_url=server.url, timeout=300)

    def predict(self, **fields: object) -> httpx.Response:
        return self.http.post(f"/v1/models/{self.model}:predict", json={"instances": [fields]})


@pytest.fixture(scope="module")
def variants(servers: dict[str, ServerProcess]) -> Iterator[dict[str, Variant]]:
    """A Variant per name."""
    made = {name: Variant(name, servers[key]) for name, (key, *_) in VARIANTS.items()}
    yield made
    for variant in made.values():
        variant.http.close()


def clip(task: str, **fields: object) -> dict:
    """A cheap request of `task`: 9 frames, 2 steps, 96x64 (img2video: from the 3:2 picture)."""
    base: dict = {"task_type": task, "prompt": "a fox running", "num_frames": 9, "num_inference_steps": 2}
    if task == "img2video":
        base.update(image_url=as_data_url(PICTURE), video_width=96)  # the height follows the picture: 96x64
    else:
        base.update(video_width=96, video_height=64)
    return {**base, **fields}


def video_of(response: httpx.Response) -> tuple[dict, bytes]:
    """(prediction without the file, file bytes) of a one-video v1 answer."""
    assert response.status_code == 200, response.text
    (prediction,) = response.json()["predictions"]
    return {k: v for k, v in prediction.items() if k != "video"}, decode_data_url(prediction["video"])[1]


@pytest.mark.parametrize(("variant", "task"), CASES)
def test_frames_size_and_fps(variants: dict[str, Variant], variant: str, task: str) -> None:
    prediction, data = video_of(variants[variant].predict(**clip(task, fps=12, seed=3)))
    prediction.pop("cache", None)  # the T2V-A14B server runs --cache (its own test)
    assert prediction == {
        "task_type": task,
        "seed": 3,
        "num_frames": 9,
        "fps": 12,
        "width": 96,
        "height": 64,
        "duration_seconds": 0.75,
    }
    frames, meta = mp4_facts(data)
    assert frames.shape == (9, 64, 96, 3) and meta["fps"] == 12


@pytest.mark.parametrize(("variant", "task"), CASES)
def test_same_seed_same_video(variants: dict[str, Variant], variant: str, task: str) -> None:
    served = variants[variant]
    first, again, other = (
        pixels_of(video_of(served.predict(**clip(task, seed=seed, output_format="gif")))[1]) for seed in (9, 9, 10)
    )
    assert first == again and first != other  # pixels: the demo's files carry their own C2PA credentials


@pytest.mark.parametrize("variant", [name for name, (_, _, tasks, _) in VARIANTS.items() if "img2video" in tasks])
def test_img2video_from_v2_binary_input_equals_the_data_url(variants: dict[str, Variant], variant: str) -> None:
    served = variants[variant]
    _, expected = video_of(served.predict(**clip("img2video", seed=4, output_format="gif")))
    triton = httpclient.InferenceServerClient(served.server.url.removeprefix("http://"))
    tensors = []
    for name, value in (("prompt", b"a fox running"), ("image", PICTURE)):  # the raw PNG, binary-framed
        tensor = httpclient.InferInput(name, [1], "BYTES")
        tensor.set_data_from_numpy(np.array([value], dtype=object), binary_data=True)
        tensors.append(tensor)
    parameters = {"task_type": "img2video", "num_frames": 9, "num_inference_steps": 2, "video_width": 96}
    result = triton.infer(
        served.model,
        tensors,
        parameters={**parameters, "seed": 4, "output_format": "gif"},
        outputs=[httpclient.InferRequestedOutput("video", binary_data=True)],
    )
    (video,) = result.as_numpy("video")
    assert pixels_of(video) == pixels_of(expected)  # the demo's files carry their own C2PA credentials
    assert result.get_response()["parameters"]["task_type"] == "img2video"


@pytest.mark.parametrize(
    ("resolution", "size"),
    [("480p", (832, 464)), ("720p", (1280, 720))],  # 16:9 at 832x480's and 1280x720's areas
)
def test_img2video_size_follows_the_picture_at_the_area(
    variants: dict[str, Variant], resolution: str, size: tuple[int, int]
) -> None:
    fields = {"video_resolution": resolution, "num_frames": 1}
    request = clip("img2video", **fields, image_url=as_data_url(picture(1600, 900)))
    del request["video_width"]
    prediction, _ = video_of(variants["wan2.1-i2v"].predict(**request))
    assert (prediction["width"], prediction["height"]) == size


def test_each_server_logs_the_variant_it_serves(servers: dict[str, ServerProcess]) -> None:
    for name, (key, *_) in VARIANTS.items():
        assert f"({name}: " in servers[key].log(), name
    assert "experts switch at boundary_ratio 0.875" in servers["wan2.2-t2v-a14b"].log()
    assert "experts switch at boundary_ratio 0.9" in servers["wan2.2-i2v-a14b"].log()


@pytest.mark.parametrize("variant", ["wan2.2-t2v-a14b", "wan2.2-i2v-a14b"])
def test_the_low_noise_experts_guidance_is_used(variants: dict[str, Variant], variant: str) -> None:
    served = variants[variant]
    task = served.tasks[0]
    default, lower = (
        # 4 steps: the last ones are below the boundary (2 would stay with the high-noise expert)
        video_of(served.predict(**clip(task, seed=5, output_format="gif", num_inference_steps=4, **fields)))[1]
        for fields in ({}, {"video_guidance_scale_2": 1.5})
    )
    assert default != lower


@pytest.mark.parametrize(
    ("variant", "fields", "message"),
    [
        ("wan2.1-i2v", {"task_type": "text2video"}, "task_type: this server serves img2video, got 'text2video'"),
        ("wan2.1-i2v", {"task_type": None, "image_url": None}, "image: task_type img2video needs image or image_url"),
        ("wan2.2-i2v-a14b", {"task_type": "text2video"}, "task_type: this server serves img2video, got 'text2video'"),
        ("wan2.2-t2v-a14b", {"image_url": as_data_url(PICTURE), "task_type": None}, "image_url: asks for img2img"),
        ("wan2.2-t2v-a14b", {"task_type": "img2video"}, "task_type: this server serves text2video, got 'img2video'"),
        ("wan2.1-i2v", {"video_guidance_scale_2": 2.0}, "video_guidance_scale_2: applies to the Wan2.2 A14B models"),
        ("wan2.2-ti2v-5b", {"video_guidance_scale_2": 2.0}, "not Wan2.2 text/image-to-video 5B, got 2.0"),
        ("wan2.2-ti2v-5b", {"video_width": 80}, "video_width: must be a multiple of 32 (e.g. 64 or 96), got 80"),
        ("wan2.2-ti2v-5b", {"video_width": 96, "num_frames": 10}, "num_frames: Wan needs 4k+1 frames"),
        ("wan2.1-t2v", {"video_resolution": "720p"}, "video_resolution: applies to img2video only"),
        ("wan2.1-i2v", {"height": 64}, "height: does not apply to img2video (use video_height), got 64"),
        (
            "wan2.1-i2v",
            {"video_resolution": "1080p"},
            "video_resolution: must be one of '480p' or '720p', got \"1080p\"",
        ),
        ("wan2.1-i2v", {"image_url": "data:image/png;base64,AAAA"}, "image_url:"),
    ],
)
def test_fields_a_variant_cannot_use_are_400(
    variants: dict[str, Variant], variant: str, fields: dict, message: str
) -> None:
    served = variants[variant]
    task = "img2video" if "img2video" in served.tasks else "text2video"
    request = {k: v for k, v in {**clip(task), **fields}.items() if v is not None}
    answer = served.predict(**request)
    assert answer.status_code == 400, answer.text
    assert message in answer.json()["error"]


def test_the_demo_infers_img2img_or_img2video_from_the_fields(variants: dict[str, Variant]) -> None:
    demo = variants["wan2.2-ti2v-5b"]
    image = demo.http.post(
        "/v1/models/sdxl:predict",
        json={
            "instances": [{"prompt": "a fox", "image": as_data_url(PICTURE), "num_inference_steps": 4, "strength": 0.5}]
        },
    )
    assert image.status_code == 200, image.text
    assert image.json()["predictions"][0]["task_type"] == "img2img"
    request = clip("img2video")
    del request["task_type"]  # video fields with a picture: img2video
    prediction, _ = video_of(demo.predict(**request))
    assert prediction["task_type"] == "img2video"


def test_openai_videos_input_reference_makes_img2video(variants: dict[str, Variant]) -> None:
    demo = variants["wan2.2-ti2v-5b"]
    fast = {"num_inference_steps": 2, "seed": 4, "fps": 8, "video_resolution": "480p"}
    with openai.OpenAI(base_url=demo.server.url + "/openai/v1", api_key="unused", max_retries=0) as sdk:
        made = sdk.videos.create_and_poll(
            prompt="a fox running",
            input_reference=("fox.png", PICTURE, "image/png"),
            seconds="1",
            extra_body=fast,
            poll_interval_ms=100,
        )
        assert (made.status, made.seconds, made.size) == ("completed", "1", "768x512"), made  # 3:2 at 480p, /32
        sized = sdk.videos.create_and_poll(
            prompt="a fox running",
            input_reference=("fox.png", PICTURE, "image/png"),
            seconds="1",
            size="96x64",
            extra_body=fast,
            poll_interval_ms=100,
        )
        data = sdk.videos.download_content(sized.id).read()
    frames, _ = mp4_facts(data)
    assert frames.shape == (9, 64, 96, 3)  # 1 s at 8 fps + 1
    # JSON bodies take a URL (data URLs included) through the same input rules.
    body = {"prompt": "a fox", "input_reference": as_data_url(PICTURE), "size": "96x64", "seconds": 1, **fast}
    answer = demo.http.post("/openai/v1/videos", json=body)
    assert answer.status_code == 200 and answer.json()["size"] == "96x64", answer.text
    # seconds at the variant's own fps (TI2V-5B: 24) when the request names none
    body = {"prompt": "a fox", "input_reference": as_data_url(PICTURE), "size": "96x64", "seconds": 1}
    answer = demo.http.post("/openai/v1/videos", json={**body, "num_inference_steps": 1})
    assert answer.status_code == 200, answer.text
    bad = demo.http.post("/openai/v1/videos", files={"input_reference": ("a.txt", b"hello")}, data={"prompt": "x"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "input_reference"
    assert "not a PNG, JPEG or WebP image" in bad.json()["error"]["message"]
    private = demo.http.post("/openai/v1/videos", json={"prompt": "x", "input_reference": "http://127.0.0.1/a.png"})
    assert private.status_code == 400, private.text


def test_openai_videos_on_an_image_to_video_model_needs_input_reference(variants: dict[str, Variant]) -> None:
    served = variants["wan2.1-i2v"]
    answer = served.http.post("/openai/v1/videos", json={"prompt": "a fox", "seconds": 1})
    assert answer.status_code == 400 and "input_reference: this model makes video from an image" in answer.text


def test_the_cache_reports_what_it_skipped_over_v1_v2_and_metrics(
    variants: dict[str, Variant], servers: dict[str, ServerProcess]
) -> None:
    served = variants["wan2.2-t2v-a14b"]  # started with --cache first_block --cache_threshold 10
    prediction, _ = video_of(served.predict(**clip("text2video", seed=6, num_inference_steps=4)))
    report = prediction["cache"]
    assert report["total_layers"] == 4 * 4 * 2  # 4 attention layers per expert call, 4 steps, CFG
    assert 0 < report["skipped_layers"] < report["total_layers"]
    assert report["skipped_fraction"] == round(report["skipped_layers"] / report["total_layers"], 3)
    triton = httpclient.InferenceServerClient(served.server.url.removeprefix("http://"))
    prompt = httpclient.InferInput("prompt", [1], "BYTES")
    prompt.set_data_from_numpy(np.array([b"a fox running"], dtype=object))
    parameters = {k: v for k, v in clip("text2video", seed=6, num_inference_steps=4).items() if k != "prompt"}
    answer = triton.infer("wan", [prompt], parameters=parameters).get_response()["parameters"]
    assert (answer["cache_skipped_layers"], answer["cache_total_layers"]) == (
        report["skipped_layers"],
        report["total_layers"],
    )
    metrics = served.http.get("/metrics").text
    assert 'kserve_diffusion_cache_skipped_layers_total{task="text2video"}' in metrics
    assert f"cache_skipped={report['skipped_fraction']:.0%}" in servers["wan2.2-t2v-a14b"].log()
    uncached, _ = video_of(variants["wan2.2-i2v-a14b"].predict(**clip("img2video")))
    assert "cache" not in uncached  # a server without --cache says nothing about it
