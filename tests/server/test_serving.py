"""Production serving against real server processes: the bounded queue, deadlines, client disconnects,
out-of-memory recovery, metrics and graceful shutdown."""

from __future__ import annotations

import re
import signal
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import httpx
import openai
import psutil
import pytest
from kserve.protocol.infer_type import InferInput, InferRequest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ROOT, ServerProcess
from tests.helpers import grpc_infer, only_image, predict, small

QUEUE = 4
LONG = {"prompt": "a slow fox", "height": 512, "width": 512, "num_inference_steps": 150}  # about 20 s here


@pytest.fixture(scope="module")
def serving_server(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The tiny SDXL base with a queue of 4."""
    args = ["--model_id", str(tiny_models["sdxl"]), "--max_queue_size", str(QUEUE)]
    server = ServerProcess(args, tmp_path_factory.mktemp("logs") / "serving.log").wait_ready()
    yield server
    server.stop()


@pytest.fixture()
def http(serving_server: ServerProcess) -> Iterator[httpx.Client]:
    """A client for the serving server."""
    with httpx.Client(base_url=serving_server.url, timeout=120) as client:
        yield client


def in_background(function, *args):  # noqa: ANN001, ANN201 - a tiny thread helper
    """Start `function(*args)` in a thread; the returned future has its result."""
    pool = ThreadPoolExecutor(max_workers=1)
    future = pool.submit(function, *args)
    pool.shutdown(wait=False)
    return future


def post(url: str, instance: dict, timeout: float = 120, request_id: str | None = None) -> httpx.Response:
    """One v1 predict on a connection of its own."""
    headers = {"x-request-id": request_id} if request_id else {}
    return httpx.post(f"{url}/v1/models/sdxl:predict", json={"instances": [instance]}, timeout=timeout, headers=headers)


def metric_samples(url: str) -> dict[tuple[str, tuple], float]:
    """Every sample of /metrics, parsed with prometheus_client's parser: (name, sorted labels) -> value."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def outcome(samples: dict, task: str, result: str) -> float:
    """The requests counter for one task and outcome."""
    return samples[("kserve_diffusion_requests_total", (("outcome", result), ("task", task)))]


def wait_until_running(url: str, timeout: float = 30) -> None:
    """Block until a generation runs (its first progress counts a step)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        samples = metric_samples(url)
        if (
            samples[("kserve_diffusion_in_flight_requests", ())] >= 1
            and samples[("kserve_diffusion_queue_length", ())] == 0
        ):
            return
        time.sleep(0.05)
    raise AssertionError("no generation started")


# --- units ---


# --- the bounded queue ---


def test_full_queue_is_503_with_retry_after_grpc_unavailable_and_openai_429(serving_server: ServerProcess) -> None:
    url = serving_server.url
    waiting = [in_background(post, url, {**LONG, "timeout": 8}) for _ in range(QUEUE + 1)]  # 1 runs, 4 wait
    deadline = time.monotonic() + 30
    while metric_samples(url)[("kserve_diffusion_queue_length", ())] < QUEUE and time.monotonic() < deadline:
        time.sleep(0.05)
    answer = post(url, small())
    assert answer.status_code == 503, answer.text
    assert int(answer.headers["Retry-After"]) >= 1
    # Refused before its input image is decoded: a broken image gets the queue's 503, not the decoder's 400.
    broken = post(url, small(image="data:image/png;base64,iVBORw0KGgoAAAAbroken", num_inference_steps=4))
    assert broken.status_code == 503, broken.text
    assert answer.json()["error"].startswith(f"the queue is full ({QUEUE} requests wait behind the running one)")
    request = InferRequest(
        model_name="sdxl", infer_inputs=[_prompt()], parameters={"height": 64, "width": 64, "num_inference_steps": 2}
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        grpc_infer(serving_server.grpc_target, request)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE and "queue is full" in refused.value.details()
    with (
        openai.OpenAI(base_url=f"{url}/openai/v1", api_key="-", max_retries=0) as sdk,
        pytest.raises(openai.RateLimitError) as limited,  # OpenAI clients back off on 429
    ):
        sdk.images.generate(prompt="a red fox", size="64x64", extra_body={"num_inference_steps": 2})
    assert limited.value.code == "queue_full" and int(limited.value.response.headers["Retry-After"]) >= 1
    codes = sorted(future.result().status_code for future in waiting)
    assert set(codes) <= {200, 504}  # each ends by itself: done, or its 8 s deadline passed
    log = serving_server.log()
    assert f"waits at queue position {QUEUE}" in log
    assert re.search(r"request=\w+ step \d+ of 150", log)  # the 8 s generation logged its progress (every 5 s)


def _prompt() -> InferInput:
    import numpy as np

    item = InferInput("prompt", [1], "BYTES")
    item.set_data_from_numpy(np.array([b"a red fox"], dtype=object))
    return item


def test_32_concurrent_clients_get_200_or_503_and_the_server_stays_healthy(serving_server: ServerProcess) -> None:
    url = serving_server.url
    process = psutil.Process(serving_server.process.pid)
    instance = {"prompt": "a fox", "height": 128, "width": 128, "num_inference_steps": 8}
    assert post(url, instance).status_code == 200  # warm
    before = process.memory_info().rss
    with ThreadPoolExecutor(max_workers=32) as pool:
        answers = list(pool.map(lambda _: post(url, instance, timeout=120), range(32)))
    codes = [answer.status_code for answer in answers]
    assert set(codes) <= {200, 503}, codes
    assert codes.count(200) >= QUEUE + 1 and codes.count(503) >= 1, codes
    assert all(int(a.headers["Retry-After"]) >= 1 for a in answers if a.status_code == 503)
    assert httpx.get(f"{url}/v2/models/sdxl/ready", timeout=5).status_code == 200
    assert post(url, instance).status_code == 200
    after = process.memory_info().rss
    assert after < before * 1.2 + 100e6, (before, after)  # near the starting level: nothing piles up


# --- deadlines and disconnects ---


def test_deadline_while_queued_drops_the_request_without_running_it(serving_server: ServerProcess) -> None:
    url = serving_server.url
    long = in_background(post, url, {**LONG, "timeout": 4})
    wait_until_running(url)
    started = time.monotonic()
    answer = post(url, small(timeout=1), request_id="queued-too-long")
    assert answer.status_code == 504, answer.text
    assert time.monotonic() - started < 3
    assert "timeout passed while it waited in the queue; it did not run" in answer.json()["error"]
    assert long.result().status_code == 504
    log = serving_server.log()
    assert "request=queued-too-long task=text2img size=" not in log  # never generated


def test_deadline_while_running_interrupts_at_the_next_step(serving_server: ServerProcess) -> None:
    started = time.monotonic()
    answer = post(serving_server.url, {**LONG, "timeout": 1})
    assert answer.status_code == 504, answer.text
    assert time.monotonic() - started < 4  # about one step after the deadline, not the 20 s of 150 steps
    assert answer.json()["error"].startswith("the request's 1 s timeout passed after step ")


def test_client_disconnect_frees_the_worker(serving_server: ServerProcess) -> None:
    url = serving_server.url
    with pytest.raises(httpx.ReadTimeout):
        post(url, LONG, timeout=1, request_id="gone-client")  # the client gives up and closes
    started = time.monotonic()
    only_image(post(url, small()))
    assert time.monotonic() - started < 5  # the long generation stopped: the next one ran at once
    deadline = time.monotonic() + 5
    while "request=gone-client task=text2img cancelled" not in serving_server.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "request=gone-client task=text2img cancelled: the client disconnected (after step" in serving_server.log()


# --- metrics ---


def test_metrics_count_outcomes_and_times(serving_server: ServerProcess, http: httpx.Client) -> None:
    url = serving_server.url
    before = metric_samples(url)
    only_image(predict(http, small()))
    assert predict(http, small(height=65)).status_code == 400
    assert post(url, {**LONG, "timeout": 0.5}).status_code == 504
    after = metric_samples(url)
    for result in ("ok", "timeout"):
        assert outcome(after, "text2img", result) == outcome(before, "text2img", result) + 1, result
    # an invalid request has no task unless it named one
    assert outcome(after, "unknown", "invalid") == outcome(before, "unknown", "invalid") + 1
    assert after[("kserve_diffusion_images_total", ())] >= before[("kserve_diffusion_images_total", ())] + 1
    steps = ("kserve_diffusion_denoising_steps_total", (("task", "text2img"),))
    assert after[steps] >= before[steps] + 2
    count = ("kserve_diffusion_generation_seconds_count", (("task", "text2img"),))
    assert after[count] == before[count] + 1
    assert ("kserve_diffusion_queue_wait_seconds_bucket", (("le", "0.1"), ("task", "text2img"))) in after
    assert after[("kserve_diffusion_denoising_steps_per_second", ())] > 0
    assert after[("kserve_diffusion_peak_accelerator_memory_bytes", ())] == 0  # CPU
    assert after[("kserve_diffusion_queue_length", ())] == 0
    assert ("kserve_diffusion_video_frames_total", ()) in after


# --- out of memory ---


@pytest.fixture(scope="module")
def oom_server(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The tiny base and Wan through tests/oom_launcher.py: requests with id inject-oom* run out of memory at
    step 1, videos with id inject-decode-oom* in the VAE decode."""
    launcher = [sys.executable, str(ROOT / "tests" / "oom_launcher.py"), "--model_name", "sdxl", "--device", "cpu"]
    log = tmp_path_factory.mktemp("logs") / "oom.log"
    args = ["--model_id", str(tiny_models["sdxl"]), "--video_model_id", str(tiny_models["wan"])]
    server = ServerProcess(args, log, launcher=launcher).wait_ready()
    yield server
    server.stop()


def test_out_of_memory_is_507_and_the_next_request_succeeds(oom_server: ServerProcess) -> None:
    url = oom_server.url
    answer = post(url, small(width=128, num_images=2), request_id="inject-oom-1")
    assert answer.status_code == 507, answer.text
    assert answer.json()["error"] == (
        "out of memory generating 2 image(s) of 128x64: send a smaller width/height or fewer num_images "
        "(the server has freed the memory and keeps serving)"
    )
    assert httpx.get(f"{url}/v2/models/sdxl/ready", timeout=5).status_code == 200
    only_image(post(url, small()))
    assert outcome(metric_samples(url), "text2img", "oom") == 1
    assert "request=inject-oom-1 task=text2img out of memory: CUDA out of memory" in oom_server.log()


def test_out_of_memory_in_the_video_decode_is_507_naming_it(oom_server: ServerProcess) -> None:
    url = oom_server.url
    video = {"task_type": "text2video", "prompt": "a fox", "video_width": 64, "video_height": 64, "num_frames": 5}
    answer = post(url, {**video, "num_inference_steps": 2}, request_id="inject-decode-oom-1")
    assert answer.status_code == 507, answer.text
    assert answer.json()["error"] == (
        "out of memory generating 5 frames of 64x64 in the VAE decode, after all 2 steps: send fewer num_frames or "
        "a smaller video_width/video_height; the operator can start the server with --vae_tiling "
        "(the server has freed the memory and keeps serving)"
    )
    assert post(url, {**video, "num_inference_steps": 2}).status_code == 200
    assert outcome(metric_samples(url), "text2video", "oom") == 1


# --- graceful shutdown ---


def test_sigterm_drains_then_exits_zero(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    server = ServerProcess(["--model_id", str(tiny_models["sdxl"])], tmp_path / "sigterm.log").wait_ready()
    running = in_background(post, server.url, {**LONG, "num_inference_steps": 20})  # about 3 s
    wait_until_running(server.url)
    server.process.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    ready = httpx.get(f"{server.url}/v2/models/sdxl/ready", timeout=5)
    assert ready.status_code == 503  # not ready at once, so the endpoint leaves the load balancer
    assert post(server.url, small()).status_code == 503  # new work goes elsewhere
    assert running.result().status_code == 200  # the running request finishes
    assert server.process.wait(timeout=60) == 0
    log = server.log()
    assert "draining: 1 request(s) in flight get up to 30s to finish" in log and "drained" in log
    server.stop()


def test_shutdown_grace_stops_what_is_left(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    args = ["--model_id", str(tiny_models["sdxl"]), "--shutdown_grace_seconds", "1"]
    server = ServerProcess(args, tmp_path / "grace.log").wait_ready()
    running = in_background(post, server.url, LONG)
    wait_until_running(server.url)
    started = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    answer = running.result()
    assert answer.status_code == 503 and "the server is shutting down" in answer.json()["error"]
    assert server.process.wait(timeout=60) == 0
    assert time.monotonic() - started < 10  # 1 s of grace, a step, and the shutdown
    server.stop()


def test_health_answers_while_a_generation_runs(serving_server: ServerProcess) -> None:
    url = serving_server.url
    long = in_background(post, url, {**LONG, "timeout": 10})
    wait_until_running(url)
    timings = []
    for _ in range(10):
        started = time.monotonic()
        assert httpx.get(f"{url}/v2/health/ready", timeout=5).status_code == 200
        timings.append(time.monotonic() - started)
    assert not long.done(), "the generation ended before the probes: they prove nothing"
    assert max(timings) < 2.0, timings  # each answered while the generation ran; far above scheduling noise
    assert long.result().status_code == 504
