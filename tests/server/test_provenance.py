"""Every output marked as AI-generated (--provenance, on by default): signed C2PA content credentials read and
validated with c2pa.Reader, and the invisible watermark read with invisible-watermark's decoder, for every file
format, task and protocol; the operator's certificate chain; narrowing per request; failures that never send
an unmarked file."""

from __future__ import annotations

import base64
import hashlib
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
import tritonclient.http as httpclient
from kserve.protocol.infer_type import InferInput, InferRequest
from kserve_diffusion.marks import watermark

from tests.conftest import ServerProcess, free_port, server_environment, start_server
from tests.helpers import decode_data_url, grpc_infer, mp4_facts, predict
from tests.image_host import gradient, mask, png
from tests.jobs_client import job_url, submit, wait_for
from tests.provenance import (
    LEAF_NAME,
    assert_signed,
    credentials,
    has_credentials,
    pixels,
    psnr,
    watermark_bits,
    write_chain,
)

warnings.filterwarnings("ignore", category=DeprecationWarning)  # the SDK marks the Sora routes deprecated

IMAGE = {"prompt": "a fox", "height": 256, "width": 256, "num_inference_steps": 2, "seed": 7}
SIZES = {"height": 64, "width": 64, "num_inference_steps": 2, "seed": 7}
SMALL = {"prompt": "a fox", **SIZES}
VIDEO = {
    "prompt": "a fox",
    "task_type": "text2video",
    "num_frames": 5,
    "video_width": 256,
    "video_height": 256,
    "num_inference_steps": 2,
    "seed": 7,
}
PICTURE = png(gradient(256, 256))
MASK = png(mask(256, 256))
MESSAGE = watermark.MESSAGE


def served_file(http: httpx.Client, fields: dict, key: str = "images") -> bytes:
    """The one file of a v1 answer."""
    response = predict(http, fields)
    assert response.status_code == 200, response.text
    value = response.json()["predictions"][0][key]
    return decode_data_url(value[0] if isinstance(value, list) else value)[1]


@pytest.fixture(scope="module")
def http(demo_server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=demo_server.url, timeout=300) as client:
        yield client


@pytest.mark.parametrize("output_format", ["png", "jpeg", "webp"])
def test_images_are_signed_and_watermarked_by_default(http: httpx.Client, output_format: str) -> None:
    data = served_file(http, {**IMAGE, "output_format": output_format})
    generation = assert_signed(data, output_format)
    assert generation["parameters"] == {"model": "sdxl", "family": "sdxl", "task": "text2img"}  # no seed by default
    assert watermark_bits(pixels(data)) == MESSAGE  # JPEG and WebP at the server's default quality, 90


@pytest.mark.parametrize("output_format", ["mp4", "gif", "webp"])
def test_videos_are_signed_and_their_frames_watermarked(http: httpx.Client, output_format: str) -> None:
    data = served_file(http, {**VIDEO, "output_format": output_format}, key="video")
    generation = assert_signed(data, output_format)
    assert generation["parameters"]["family"] == "wan" and generation["parameters"]["task"] == "text2video"
    if output_format == "mp4":
        frames, _ = mp4_facts(data)
        assert watermark_bits(frames[0], watermark.VIDEO_STRENGTH) == MESSAGE  # the key frame


def test_edits_are_edited_media_with_their_inputs_as_ingredients_by_hash(http: httpx.Client) -> None:
    picture = base64.b64encode(PICTURE).decode()
    digest = "sha256:" + hashlib.sha256(PICTURE).hexdigest()
    mask_digest = "sha256:" + hashlib.sha256(MASK).hexdigest()
    cases = [
        ({**IMAGE, "image": picture, "strength": 0.6}, "png", "images", [("image", "parentOf", digest)]),
        (
            {**IMAGE, "image": picture, "mask": base64.b64encode(MASK).decode(), "output_format": "jpeg"},
            "jpeg",
            "images",
            [("image", "parentOf", digest), ("mask", "inputTo", mask_digest)],
        ),
        (
            {**VIDEO, "task_type": "img2video", "image": picture, "video_width": None, "video_height": None},
            "mp4",
            "video",
            [("image", "parentOf", digest)],
        ),
    ]
    for fields, output_format, key, expected in cases:
        fields = {name: value for name, value in fields.items() if value is not None}
        data = served_file(http, fields, key)
        generation = assert_signed(data, output_format, action="c2pa.edited")
        found = credentials(data, output_format)
        assert found.actions[0]["action"] == "c2pa.opened"  # C2PA 2: the edited picture is opened first
        ingredients = [(i["title"], i["relationship"], i["instance_id"]) for i in found.manifest["ingredients"]]
        assert ingredients == expected
        assert all("thumbnail" not in i and "data" not in i for i in found.manifest["ingredients"])
        assert PICTURE[-4000:] not in data  # the input's bytes are not in the file, its hash is
        assert generation["parameters"]["task"] == fields.get("task_type", "inpaint" if "mask" in fields else "img2img")


def test_every_protocol_answers_signed_files(demo_server: ServerProcess, http: httpx.Client) -> None:
    # v2 REST, binary outputs (tritonclient asks for them)
    client = httpclient.InferenceServerClient(demo_server.url.removeprefix("http://"))
    prompt = httpclient.InferInput("prompt", [1], "BYTES")
    prompt.set_data_from_numpy(np.array([b"a fox"], dtype=object), binary_data=True)
    result = client.infer("sdxl", [prompt], parameters={"height": 64, "width": 64, "num_inference_steps": 2})
    assert_signed(bytes(result.as_numpy("images")[0]), "png")
    # v2 gRPC
    text = InferInput("prompt", [1], "BYTES")
    text.set_data_from_numpy(np.array([b"a fox"], dtype=object), False)
    answer = grpc_infer(
        demo_server.grpc_target,
        InferRequest(model_name="sdxl", infer_inputs=[text], parameters={**SIZES, "output_format": "webp"}),
    )
    [webp] = {o.name: o for o in answer.outputs}["images"].as_numpy().tolist()
    assert_signed(base64.b64decode(webp) if not webp.startswith(b"RIFF") else webp, "webp")
    # OpenAI images and videos
    with openai.OpenAI(base_url=demo_server.url + "/openai/v1", api_key="unused", max_retries=0) as sdk:
        image = sdk.images.generate(prompt="a fox", size="64x64", extra_body={"num_inference_steps": 2})
        assert_signed(base64.b64decode(image.data[0].b64_json or ""), "png")
        extra = {"num_inference_steps": 2, "fps": 8}
        video = sdk.videos.create_and_poll(prompt="a fox", seconds="1", size="128x128", extra_body=extra)
        assert video.status == "completed", video.error
        assert_signed(sdk.videos.download_content(video.id).content, "mp4")
    # jobs
    job = wait_for(http, job_url(submit(http, {**SMALL, "output_format": "jpeg"})))
    assert job["status"] == "succeeded", job.get("error")
    assert_signed(decode_data_url(job["predictions"][0]["images"][0])[1], "jpeg")


def test_fewer_marks_than_the_server_applies_is_a_400(http: httpx.Client) -> None:
    for asked, expected in [
        ("off", "fewer marks need --allow_unmarked_requests on the server, got 'off'"),
        ("c2pa", "fewer marks need --allow_unmarked_requests"),
        ("c2pa,stamp", "expected a comma list of c2pa and watermark, or off, got 'c2pa,stamp'"),
    ]:
        response = predict(http, {**SMALL, "provenance": asked})
        assert response.status_code == 400, response.text
        assert "provenance" in response.text and expected in response.text
    assert "provenance" in v2_error(http, "off")


def v2_error(http: httpx.Client, asked: str) -> str:
    """The v2 REST error for a `provenance` parameter (the same check as v1's)."""
    body = {"inputs": [{"name": "prompt", "datatype": "BYTES", "shape": [1], "data": ["a fox"]}]}
    response = http.post("/v2/models/sdxl/infer", json={**body, "parameters": {**SIZES, "provenance": asked}})
    assert response.status_code == 400
    return response.text


@pytest.fixture(scope="module")
def signed_server(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The tiny SDXL signing with a test CA's leaf, seeds in the manifests, requests allowed fewer marks."""
    chain, key = write_chain(tmp_path_factory.mktemp("c2pa"))
    args = ["--model_id", str(tiny_models["sdxl"]), "--c2pa_cert", str(chain), "--c2pa_key", str(key)]
    args += ["--c2pa_include_parameters", "true", "--allow_unmarked_requests", "true"]
    server = start_server(args, tmp_path_factory.mktemp("logs") / "signed.log", marks=True)
    yield server
    server.stop()


def test_the_operators_certificate_signs_and_seeds_are_included(signed_server: ServerProcess) -> None:
    with httpx.Client(base_url=signed_server.url, timeout=300) as http:
        data = served_file(http, IMAGE)
    generation = assert_signed(data, "png", signer=LEAF_NAME)
    assert generation["parameters"]["seed"] == IMAGE["seed"]
    found = credentials(data, "png")
    assert found.manifest["signature_info"]["issuer"] == "Tests"
    assert "untrusted" not in signed_server.log()  # the start-up certificate's warning is not logged


def test_each_mark_alone_and_none(signed_server: ServerProcess) -> None:
    with httpx.Client(base_url=signed_server.url, timeout=300) as http:
        files = {asked: served_file(http, {**IMAGE, "provenance": asked}) for asked in ("off", "c2pa", "watermark")}
    assert not has_credentials(files["off"], "png") and watermark_bits(pixels(files["off"])) != MESSAGE
    assert has_credentials(files["c2pa"], "png") and watermark_bits(pixels(files["c2pa"])) != MESSAGE
    assert not has_credentials(files["watermark"], "png") and watermark_bits(pixels(files["watermark"])) == MESSAGE
    # The same seed makes the same pixels: the signature adds none, the watermark a bounded change.
    assert np.array_equal(pixels(files["off"]), pixels(files["c2pa"]))
    assert psnr(pixels(files["off"]), pixels(files["watermark"])) > 40


@pytest.fixture(scope="module")
def unreachable_tsa_server(
    tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """C2PA signing that fails at runtime: the time-stamp authority is a closed loopback port."""
    tsa = f"http://127.0.0.1:{free_port()}/tsa"
    args = ["--model_id", str(tiny_models["sdxl"]), "--provenance", "c2pa", "--c2pa_tsa_url", tsa]
    server = start_server(args, tmp_path_factory.mktemp("logs") / "tsa.log")
    yield server
    server.stop()


def test_a_signing_failure_is_a_500_and_never_an_unmarked_file(unreachable_tsa_server: ServerProcess) -> None:
    with httpx.Client(base_url=unreachable_tsa_server.url, timeout=300) as http:
        for _ in range(2):  # and the next request is answered the same way, the server up
            response = predict(http, SMALL)
            assert response.status_code == 500, response.text
            assert "C2PA content credentials failed" in response.text and "no unmarked file is sent" in response.text
        assert http.get("/v2/health/ready").status_code == 200
    assert "127.0.0.1" in unreachable_tsa_server.log()  # the operator's log says why


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--c2pa_cert", "/nonexistent/chain.pem", "--c2pa_key", "/nonexistent/key.pem"], "--c2pa_cert: cannot read"),
        (["--c2pa_cert", "CHAIN"], "--c2pa_cert and --c2pa_key: give both"),
        (["--c2pa_cert", "KEY", "--c2pa_key", "KEY"], "--c2pa_cert: "),
        (["--c2pa_cert", "CHAIN", "--c2pa_key", "OTHER_KEY"], "--c2pa_key: the key does not belong"),
        (["--provenance", "c2pa,stamp"], "--provenance: expected a comma list of c2pa and watermark, or off"),
    ],
)
def test_bad_marks_settings_stop_the_start_naming_the_flag(
    tmp_path: Path, tiny_models: dict[str, Path], args: list[str], expected: str
) -> None:
    chain, key = write_chain(tmp_path)
    (tmp_path / "other").mkdir()
    _, other_key = write_chain(tmp_path / "other")
    names = {"CHAIN": str(chain), "KEY": str(key), "OTHER_KEY": str(other_key)}
    command = [sys.executable, "-m", "kserve_diffusion", "--model_id", str(tiny_models["sdxl"]), "--device", "cpu"]
    command += [names.get(arg, arg) for arg in args]
    done = subprocess.run(command, env=server_environment(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert expected in done.stderr
