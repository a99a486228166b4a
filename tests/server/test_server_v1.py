"""v1 REST against a real server process with the tiny SDXL base."""

from __future__ import annotations

import threading
import time

import httpx
import pytest
from kserve_diffusion.pipelines.schedulers import SDXL_SCHEDULERS

from tests.helpers import decode_data_url, open_image, small

PREDICT = "/v1/models/sdxl:predict"


def predict(client: httpx.Client, *instances: dict) -> httpx.Response:
    return client.post(PREDICT, json={"instances": list(instances)})


def images_of(response: httpx.Response) -> list[bytes]:
    assert response.status_code == 200, response.text
    return [decode_data_url(url)[1] for url in response.json()["predictions"][0]["images"]]


def test_text2img_returns_png_of_requested_size(client: httpx.Client) -> None:
    response = predict(client, small(height=128, width=64, seed=42))
    prediction = response.json()["predictions"][0]
    assert prediction["task_type"] == "text2img"
    assert prediction["seed"] == 42
    mime, data = decode_data_url(prediction["images"][0])
    image = open_image(data)
    assert (mime, image.format, image.size, image.mode) == ("image/png", "PNG", (64, 128), "RGB")


def test_wide_low_images_generate(client: httpx.Client) -> None:
    # diffusers' own SDXL watermark (added when invisible-watermark is installed) failed these with a 500.
    for width, height in ((256, 64), (320, 128)):
        image = open_image(images_of(predict(client, small(width=width, height=height)))[0])
        assert image.size == (width, height)


def test_two_images_in_one_call_differ(client: httpx.Client) -> None:
    first, second = images_of(predict(client, small(num_images=2, seed=3)))
    assert first != second


def test_same_seed_same_bytes_other_seed_differs(client: httpx.Client) -> None:
    one = images_of(predict(client, small(seed=1234)))
    again = images_of(predict(client, small(seed=1234)))
    other = images_of(predict(client, small(seed=1235)))
    assert one == again
    assert one != other


def test_random_seed_is_echoed_and_reproduces(client: httpx.Client) -> None:
    response = predict(client, small())
    seed = response.json()["predictions"][0]["seed"]
    assert isinstance(seed, int)
    assert images_of(response) == images_of(predict(client, small(seed=seed)))


@pytest.mark.parametrize("scheduler", list(SDXL_SCHEDULERS))
def test_every_scheduler_generates(client: httpx.Client, scheduler: str) -> None:
    (data,) = images_of(predict(client, small(scheduler=scheduler, seed=5, num_inference_steps=3)))
    assert open_image(data).size == (64, 64)


def test_several_instances_each_generate(client: httpx.Client) -> None:
    response = predict(client, small(seed=1), small(seed=2, width=128))
    predictions = response.json()["predictions"]
    assert [p["seed"] for p in predictions] == [1, 2]
    assert open_image(decode_data_url(predictions[1]["images"][0])[1]).size == (128, 64)


def test_seed_000_input_shape_and_curl_default_content_type(client: httpx.Client) -> None:
    # plain `curl -d` sends application/x-www-form-urlencoded; the body is still JSON
    body = '{"input": {"prompt": "a red fox", "height": 64, "width": 64, "num_inference_steps": 2, "seed": 9}}'
    response = client.post(PREDICT, content=body, headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 200, response.text
    assert response.json()["predictions"][0]["seed"] == 9


BAD_INSTANCES = [
    ({"height": 64}, "prompt", "missing"),
    (small(prompt=""), "prompt", "empty"),
    (small(prompt="   "), "prompt", "empty"),
    (small(prompt=5), "prompt", "got 5"),
    (small(height=100), "height", "multiple of 8"),
    (small(width=8), "width", "between 64 and 2048"),
    (small(width=4096), "width", "got 4096"),
    (small(height="512"), "height", "integer"),
    (small(num_inference_steps=0), "num_inference_steps", "got 0"),
    (small(num_inference_steps=151), "num_inference_steps", "between 1 and 150"),
    (small(guidance_scale=-1), "guidance_scale", ">= 0"),
    (small(guidance_scale=51), "guidance_scale", "<= 50"),
    (small(strength=0), "strength", "> 0"),
    (small(strength=1.5), "strength", "got 1.5"),
    (small(num_images=5), "num_images", "between 1 and 4"),
    (small(num_images=0), "num_images", "got 0"),
    (small(high_noise_frac=1.0), "high_noise_frac", "< 1"),
    (small(high_noise_frac=0.8), "high_noise_frac", "refiner"),
    (small(scheduler="EULER"), "scheduler", "K_EULER_ANCESTRAL"),
    (small(task_type="paint"), "task_type", "text2img"),
    (small(task_type="text2video"), "task_type", "serves text2img, img2img, inpaint"),
    (small(promt="typo"), "promt", "unknown field"),
    (small(seed=-1), "seed", ">= 0"),
    (small(seed=1.5), "seed", "integer"),
    (small(refiner_inference_steps=500), "refiner_inference_steps", "between 1 and 150"),
]


@pytest.mark.parametrize(("instance", "field", "words"), BAD_INSTANCES, ids=[b[1] + ":" + b[2] for b in BAD_INSTANCES])
def test_bad_input_is_400_naming_the_field(client: httpx.Client, instance: dict, field: str, words: str) -> None:
    response = predict(client, instance)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error.startswith(f"{field}:") or f"; {field}:" in error, error
    assert words in error, error


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ('{"instances": [', "JSON"),
        ('{"instances": {"prompt": "x"}}', "instances"),
        ('{"prompt": "x"}', "instances"),
        ('{"instances": []}', "instances"),
        ('{"instances": ["a red fox"]}', "JSON object"),
        ("[1, 2]", "instances"),
    ],
)
def test_malformed_bodies_are_400(client: httpx.Client, body: str, words: str) -> None:
    for content_type in ("application/json", "application/x-www-form-urlencoded"):
        response = client.post(PREDICT, content=body, headers={"Content-Type": content_type})
        assert response.status_code == 400, (content_type, response.text)
        error = response.json()["error"]
        assert words in error or "request format" in error, error


def test_all_instances_are_validated_before_any_runs(client: httpx.Client, base_server) -> None:
    before = base_server.log().count("request=")
    response = predict(client, small(seed=77), small(height=7))
    assert response.status_code == 400
    assert base_server.log().count("request=") == before


def test_server_serves_after_a_failure(client: httpx.Client) -> None:
    assert predict(client, small(num_inference_steps=10_000)).status_code == 400
    assert client.post(PREDICT, content="{not json").status_code == 400
    assert len(images_of(predict(client, small()))) == 1


def test_health_answers_fast_while_generating(client: httpx.Client, base_server) -> None:
    done = threading.Event()
    result: dict[str, httpx.Response] = {}

    def long_generation() -> None:
        with httpx.Client(base_url=base_server.url, timeout=300) as other:
            result["response"] = predict(other, small(height=512, width=512, num_inference_steps=25))
        done.set()

    worker = threading.Thread(target=long_generation)
    worker.start()
    time.sleep(1.0)  # let it reach the accelerator thread
    latencies = []
    with httpx.Client(base_url=base_server.url, timeout=5) as probe:
        for path in ("/v2/health/ready", "/v2/health/live", "/v2/models/sdxl/ready", "/metrics", "/"):
            for _ in range(3):
                started = time.perf_counter()
                assert probe.get(path).status_code == 200
                latencies.append(time.perf_counter() - started)
            assert not done.is_set(), "the generation finished before the probes: make it longer"
    worker.join(timeout=300)
    assert result["response"].status_code == 200
    # Each probe was answered before the generation finished (checked above), so none waited for it; the bound
    # is far above scheduling noise on 2 busy cores, and far below the generation's own time.
    assert max(latencies) < 2.0, latencies


def test_one_log_line_per_request(client: httpx.Client, base_server) -> None:
    response = client.post(PREDICT, json={"instances": [small(seed=31337)]}, headers={"x-request-id": "req-abc"})
    assert response.status_code == 200
    lines = [line for line in base_server.log().splitlines() if "request=req-abc" in line]
    assert len(lines) == 1
    for part in ("task=text2img", "size=64x64", "steps=2", "seed=31337", "queue_wait=", "generation="):
        assert part in lines[0]


def test_no_progress_bars_in_log(base_server) -> None:
    assert "it/s]" not in base_server.log()
