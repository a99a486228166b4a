"""One request over two ranks (gloo on the CPU) through real server processes: Ulysses context parallelism on the
tiny FLUX, FLUX.2, Qwen-Image and Wan, CFG parallelism on Qwen-Image, Wan and SDXL, each against one rank; the
per-step decisions taken together (cancel, deadline, First-Block-Cache); a LoRA switched; a follower killed."""

from __future__ import annotations

import base64
import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
from kserve.protocol.infer_type import InferInput, InferRequest
from kserve_diffusion.testing import tiny
from PIL import Image

from tests.conftest import ROOT, ServerProcess
from tests.helpers import decode_data_url, grpc_infer, mp4_facts, predict
from tests.jobs_client import job_url, submit, wait_for

ULYSSES = ["--ulysses_degree", "2", "--parallel_timeout", "30"]
CFG = ["--cfg_parallel", "true", "--parallel_timeout", "30"]
IMAGE = {"prompt": "a red fox", "width": 128, "height": 64, "num_inference_steps": 3, "seed": 5}
VIDEO = {"prompt": "a red fox", "task_type": "text2video", "video_width": 64, "video_height": 64, "num_frames": 5}
VIDEO |= {"num_inference_steps": 3, "seed": 5}
LEVELS = 2  # the bound: the same seed on one and two ranks gives pixels within 2 levels


@pytest.fixture(scope="module")
def servers(
    tiny_models: dict[str, Path], lora_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, ServerProcess]]:
    """The parallel servers and the one-rank references the session does not already have, started together."""
    root = tmp_path_factory.mktemp("parallel")
    qwen, klein = tiny.write("qwen_image", root / "qwen-image"), tiny.write("flux2_klein", root / "flux2-klein")
    flux = ["--model_id", str(tiny_models["flux"]), "--lora_dir", str(lora_dir)]
    wan = ["--video_model_id", str(tiny_models["wan"])]
    specs = {
        "flux": ([*flux, *wan, *ULYSSES], "flux"),  # FLUX.1 and Wan2.1, both transformers split
        "flux_one": ([*flux, *wan], "flux"),
        "klein": (["--model_id", str(klein), *ULYSSES], "flux2"),
        "klein_one": (["--model_id", str(klein)], "flux2"),
        "qwen": (["--model_id", str(qwen), *ULYSSES], "qwen"),
        "qwen_cfg": (["--model_id", str(qwen), *wan, *CFG], "qwen"),  # Qwen-Image and Wan: two passes a step
        "qwen_one": (["--model_id", str(qwen), *wan], "qwen"),
        "sdxl_cfg": (["--model_id", str(tiny_models["sdxl"]), *CFG], "sdxl"),  # batched CFG: the batch split
        # tests/oom_launcher.py: out of memory at a step (inject-oom*) or in the Wan decode (inject-decode-oom*)
        "oom": ([*flux, *wan, *ULYSSES], "flux"),
        "first_block": (["--model_id", str(tiny_models["flux"]), *ULYSSES, "--cache", "first_block"], "flux"),
    }
    specs["first_block"][0].extend(["--cache_threshold", "0.3"])  # each rank alone: one skips, one computes
    launcher = [sys.executable, str(ROOT / "tests" / "oom_launcher.py"), "--model_name", "flux", "--device", "cpu"]
    started = {
        name: ServerProcess(args, root / f"{name}.log", model_name=model, launcher=launcher if name == "oom" else None)
        for name, (args, model) in specs.items()
    }
    try:
        for server in started.values():
            server.wait_ready(timeout=400)
        yield started
    finally:
        for server in started.values():
            server.stop()


def generate(server: ServerProcess, fields: dict, timeout: float = 180) -> tuple[dict, np.ndarray]:
    """One v1 predict; its prediction and its pixels (every frame of a video)."""
    with httpx.Client(base_url=server.url, timeout=timeout) as http:
        response = predict(http, fields, model=server.model_name)
    assert response.status_code == 200, response.text
    prediction = response.json()["predictions"][0]
    _, data = decode_data_url(prediction.get("video") or prediction["images"][0])
    if prediction.get("video"):
        return prediction, mp4_facts(data)[0].astype(int)
    return prediction, np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)


def assert_same(one: np.ndarray, two: np.ndarray) -> None:
    """The same picture within LEVELS, and not a blank one."""
    assert one.shape == two.shape
    assert np.abs(one - two).max() <= LEVELS
    assert one.std() > 5


@pytest.mark.parametrize(
    ("parallel", "one", "fields"),
    [
        ("flux", "flux_one", IMAGE),
        ("flux", "flux_one", VIDEO),  # Wan2.1, split beside FLUX
        ("klein", "klein_one", IMAGE),
        ("qwen", "qwen_one", IMAGE),
        ("qwen_cfg", "qwen_one", {**IMAGE, "negative_prompt": "blurry", "true_cfg_scale": 4.0}),
        ("qwen_cfg", "qwen_one", VIDEO),  # Wan's guidance: two passes a step
        ("qwen_cfg", "qwen_one", IMAGE),  # no true CFG: one pass, run on both ranks
    ],
)
def test_two_ranks_give_the_pixels_of_one(
    servers: dict[str, ServerProcess], parallel: str, one: str, fields: dict
) -> None:
    assert_same(generate(servers[one], fields)[1], generate(servers[parallel], fields)[1])


def test_every_protocol_answers_from_the_split_model(servers: dict[str, ServerProcess]) -> None:
    """gRPC v2 and the OpenAI SDK reach the same generation over two ranks: the pixels of one rank's v1."""
    expected = generate(servers["flux_one"], IMAGE)[1]
    prompt = InferInput("prompt", [1], "BYTES")
    prompt.set_data_from_numpy(np.array([IMAGE["prompt"].encode()], dtype=object), binary_data=True)
    fields = {name: value for name, value in IMAGE.items() if name != "prompt"}
    response = grpc_infer(servers["flux"].grpc_target, InferRequest("flux", [prompt], parameters=fields))
    image = {output.name: output for output in response.outputs}["images"].as_numpy()[0]
    assert_same(expected, np.asarray(Image.open(io.BytesIO(image)).convert("RGB")).astype(int))
    client = openai.OpenAI(base_url=servers["flux"].url + "/openai/v1", api_key="unused", max_retries=0)
    extra = {"num_inference_steps": IMAGE["num_inference_steps"], "seed": IMAGE["seed"]}
    answer = client.images.generate(model="flux", prompt=IMAGE["prompt"], size="128x64", extra_body=extra)
    picture = Image.open(io.BytesIO(base64.b64decode(answer.data[0].b64_json))).convert("RGB")
    assert_same(expected, np.asarray(picture).astype(int))


def test_cfg_parallel_splits_the_passes(servers: dict[str, ServerProcess]) -> None:
    before = servers["qwen_cfg"].log().count("(its two passes split)")
    generate(servers["qwen_cfg"], VIDEO)
    assert servers["qwen_cfg"].log().count("(its two passes split)") == before + 1  # the follower ran its pass


def test_sdxl_batched_cfg_split_over_two_ranks(servers: dict[str, ServerProcess], base_server: ServerProcess) -> None:
    fields = {**IMAGE, "num_images": 2}
    assert_same(generate(base_server, fields)[1], generate(servers["sdxl_cfg"], fields)[1])


def test_first_block_cache_decides_together(servers: dict[str, ServerProcess]) -> None:
    # diffusers 0.42.1 decides per rank: at this threshold one rank skips the blocks while the other computes
    # them, and the run hangs in the next all-to-all. Decided together, it finishes, and skips some.
    for seed in (1, 2, 3):
        prediction, _ = generate(servers["first_block"], {**IMAGE, "num_inference_steps": 12, "seed": seed}, 60)
        assert 0 < prediction["cache"]["skipped_layers"] < prediction["cache"]["total_layers"]


def test_a_deadline_stops_every_rank_and_the_next_request_runs(servers: dict[str, ServerProcess]) -> None:
    server = servers["flux"]
    slow = {**IMAGE, "width": 512, "height": 512, "num_inference_steps": 150, "timeout": 1.5}
    with httpx.Client(base_url=server.url, timeout=60) as http:
        answer = predict(http, slow, model="flux")
    assert answer.status_code == 504 and "timeout passed after step" in answer.json()["error"]
    assert_same(generate(servers["flux_one"], IMAGE)[1], generate(server, IMAGE)[1])


def test_a_cancelled_job_stops_every_rank(servers: dict[str, ServerProcess]) -> None:
    server = servers["flux"]
    with httpx.Client(base_url=server.url, timeout=60) as http:
        job = submit(http, {**IMAGE, "width": 512, "height": 512, "num_inference_steps": 150}, model="flux")
        wait_for(http, job_url(job, "flux"), ("running",))
        time.sleep(0.5)
        assert http.delete(job_url(job, "flux")).status_code == 200
        assert wait_for(http, job_url(job, "flux"), timeout=30)["status"] == "cancelled"
    assert "rank 0 stopped after step" in server.log()
    assert_same(generate(servers["flux_one"], IMAGE)[1], generate(server, IMAGE)[1])


def test_loras_switched_between_requests(servers: dict[str, ServerProcess]) -> None:
    plain = generate(servers["flux"], IMAGE)[1]
    for name in ("flux-style", "flux-detail", "flux-style"):
        fields = {**IMAGE, "loras": [{"name": name, "scale": 1.0}]}
        with_lora = generate(servers["flux"], fields)[1]
        assert_same(generate(servers["flux_one"], fields)[1], with_lora)
        assert np.abs(with_lora - plain).max() > LEVELS  # the adapter applied on every rank
    assert_same(plain, generate(servers["flux"], IMAGE)[1])  # and off again


def test_out_of_memory_at_a_step_stops_every_rank_and_inside_one_restarts_the_group(
    servers: dict[str, ServerProcess],
) -> None:
    server = servers["oom"]
    with httpx.Client(base_url=server.url, timeout=120) as http:
        at_step = http.post(
            "/v1/models/flux:predict", json={"instances": [IMAGE]}, headers={"x-request-id": "inject-oom-1"}
        )
        assert at_step.status_code == 507, at_step.text
        assert http.get("/v2/models/flux/ready").status_code == 200  # decided together: the group is in step
        assert_same(generate(servers["flux_one"], IMAGE)[1], generate(server, IMAGE)[1])
        headers = {"x-request-id": "inject-decode-oom-1"}  # rank 0 alone fails outside the step boundaries
        inside = http.post("/v1/models/flux:predict", json={"instances": [VIDEO]}, headers=headers)
        assert inside.status_code == 507, inside.text
        deadline = time.monotonic() + 120
        while "the group started again" not in server.log() and time.monotonic() < deadline:
            time.sleep(0.2)
        while http.get("/v2/models/flux/ready").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
    assert "rank 0 failed inside a step (DecodeOutOfMemory)" in server.log()
    assert_same(generate(servers["flux_one"], VIDEO)[1], generate(server, VIDEO)[1])


def followers_of(server: ServerProcess) -> list[int]:
    """The follower processes the server started."""
    listed = subprocess.run(["pgrep", "-P", str(server.process.pid)], capture_output=True, text=True, check=False)
    return [int(pid) for pid in listed.stdout.split()]


def test_a_killed_follower_turns_readiness_off_and_the_group_restarts(servers: dict[str, ServerProcess]) -> None:
    server = servers["flux"]
    (follower,) = followers_of(server)
    with httpx.Client(base_url=server.url, timeout=60) as http:
        job = submit(http, {**IMAGE, "width": 512, "height": 512, "num_inference_steps": 150}, model="flux")
        wait_for(http, job_url(job, "flux"), ("running",))
        os.kill(follower, signal.SIGKILL)
        ended = wait_for(http, job_url(job, "flux"), timeout=60)  # never hung: failed, and says why
        assert ended["status"] == "failed" and "rank" in ended["error"]["message"], ended
        states = set()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            states.add(http.get("/v2/models/flux/ready").status_code)
            if 200 in states and 503 in states:
                break
            time.sleep(0.2)
        assert states == {200, 503}, states
    assert followers_of(server) not in ([], [follower])  # a new follower
    log = server.log()
    assert "not ready until the group has started again" in log and "the group started again" in log
    assert_same(generate(servers["flux_one"], IMAGE)[1], generate(server, IMAGE)[1])
