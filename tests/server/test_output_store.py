"""--output_store against real S3 API servers (moto_server; s3rver for presigned URLs' expiry): answers with URLs
over v1, v2 REST and gRPC, jobs, the OpenAI images and Videos APIs; the store failing and coming back; job
results in Redis as object keys only."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import grpc
import httpx
import numpy as np
import openai
import pytest
import redis
from kserve.protocol.infer_type import InferInput, InferRequest

from tests.conftest import RedisProcess, ServerProcess, free_port, server_environment, start_server
from tests.docs_examples import examples, run
from tests.helpers import decode_data_url, grpc_infer, predict
from tests.jobs_client import OWNER, job_url, submit, wait_for, wait_idle
from tests.provenance import pixels, watermark_bits
from tests.s3_servers import BUCKET, S3Process

MESSAGE = b"AI-GEN"  # the watermark's documented message
warnings.filterwarnings("ignore", category=DeprecationWarning)  # the SDK marks the Sora routes deprecated

IMAGE = {"prompt": "a fox in a bucket", "height": 64, "width": 64, "num_inference_steps": 2, "seed": 11}
VIDEO = {
    "prompt": "a fox",
    "task_type": "text2video",
    "num_frames": 9,
    "video_width": 128,
    "video_height": 128,
    "num_inference_steps": 2,
}
TODAY = datetime.now(timezone.utc).strftime("%Y-%m-%d")


@pytest.fixture(scope="module")
def store_server(
    tiny_models: dict[str, Path],
    s3_server: S3Process,
    redis_server: RedisProcess,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServerProcess]:
    """Images and video, results to s3://results/runs on moto, jobs in Redis (db 3: its own keys)."""
    args = ["--model_id", str(tiny_models["sdxl"]), "--video_model_id", str(tiny_models["wan"])]
    args += ["--output_store", f"s3://{BUCKET}/runs", "--job_store", redis_server.url[:-1] + "3"]
    env = server_environment(s3_server.environment())
    server = start_server(args, tmp_path_factory.mktemp("logs") / "store.log", env=env)
    yield server
    server.stop()


@pytest.fixture
def http(store_server: ServerProcess) -> Iterator[httpx.Client]:
    """A client with an identity (its jobs are its own)."""
    with httpx.Client(base_url=store_server.url, timeout=120, headers=OWNER) as client:
        yield client
        wait_idle(client)


def fetch(url: str) -> httpx.Response:
    """GET a presigned URL as a client would: straight from the store."""
    response = httpx.get(url, timeout=30)
    assert response.status_code == 200, response.text
    return response


def data_of(data_url: str) -> bytes:
    """The file inside a data URL."""
    return decode_data_url(data_url)[1]


def test_the_store_gets_the_marked_files(http: httpx.Client) -> None:
    # This server marks with the watermark alone (tests/conftest.py); marks come before the upload.
    fields = {**IMAGE, "height": 256, "width": 256, "output_format": "jpeg", "response_format": "url"}
    response = predict(http, fields)
    assert response.status_code == 200, response.text
    assert watermark_bits(pixels(fetch(response.json()["predictions"][0]["images"][0]).content)) == MESSAGE


def test_v1_urls_hold_the_files_a_base64_answer_holds(http: httpx.Client) -> None:
    inline = predict(http, {**IMAGE, "num_images": 2}, IMAGE)
    linked = predict(http, {**IMAGE, "num_images": 2, "response_format": "url"}, {**IMAGE, "response_format": "url"})
    assert linked.status_code == 200, linked.text
    urls = [url for prediction in linked.json()["predictions"] for url in prediction["images"]]
    files = [data_of(url) for prediction in inline.json()["predictions"] for url in prediction["images"]]
    assert len(urls) == 3 and len(linked.content) < 3000
    for index, (url, expected) in enumerate(zip(urls, files, strict=True)):
        # {prefix}/{model}/{date}/{request id}/{index}.{ext}, counted across the request's instances
        assert re.fullmatch(rf"/{BUCKET}/runs/sdxl/{TODAY}/[A-Za-z0-9_-]+/{index}\.png", httpx.URL(url).path), url
        answer = fetch(url)
        assert answer.content == expected and answer.headers["content-type"] == "image/png"
    assert "X-Amz-Expires=3600" in urls[0]  # --output_url_ttl_seconds' default


def test_v2_rest_and_grpc_answer_a_bytes_output_of_urls(http: httpx.Client, store_server: ServerProcess) -> None:
    inputs = [
        {"name": "prompt", "datatype": "BYTES", "shape": [1], "data": [IMAGE["prompt"]]},
        {"name": "seed", "datatype": "INT64", "shape": [1], "data": [IMAGE["seed"]]},
    ]
    parameters = {"height": 64, "width": 64, "num_inference_steps": 2}
    body = {"inputs": inputs, "parameters": parameters}
    inline = http.post("/v2/models/sdxl/infer", json=body).json()
    expected = base64.b64decode(inline["outputs"][0]["data"][0])
    url_input = {"name": "response_format", "datatype": "BYTES", "shape": [1], "data": ["url"]}
    rest = http.post("/v2/models/sdxl/infer", json={**body, "inputs": [*inputs, url_input]})
    assert rest.status_code == 200, rest.text
    images = rest.json()["outputs"][0]
    assert images["name"] == "images" and images["datatype"] == "BYTES" and images["shape"] == [1]
    assert images["parameters"] == {"content_type": "image/png", "response_format": "url"}
    assert fetch(images["data"][0]).content == expected

    def tensor(name: str, datatype: str, value: object) -> InferInput:
        item = InferInput(name, [1], datatype)
        item.set_data_from_numpy(np.array([value], dtype=object if datatype == "BYTES" else np.int64), False)
        return item

    request = InferRequest(
        model_name="sdxl",
        infer_inputs=[
            tensor("prompt", "BYTES", IMAGE["prompt"].encode()),
            tensor("seed", "INT64", IMAGE["seed"]),
            tensor("response_format", "BYTES", b"url"),
        ],
        parameters=parameters,
    )
    answer = grpc_infer(store_server.grpc_target, request)
    output = {o.name: o for o in answer.outputs}["images"]
    assert output.parameters["content_type"].string_param == "image/png"
    [url] = output.as_numpy().tolist()
    assert fetch(url.decode() if isinstance(url, bytes) else url).content == expected


def test_openai_images_answer_data_url(store_server: ServerProcess, http: httpx.Client) -> None:
    with openai.OpenAI(base_url=store_server.url + "/openai/v1", api_key="unused", max_retries=0) as client:
        extra = {"seed": 5, "num_inference_steps": 2}
        linked = client.images.generate(prompt="a fox", size="64x64", response_format="url", extra_body=extra)
        inline = client.images.generate(prompt="a fox", size="64x64", response_format="b64_json", extra_body=extra)
    assert linked.data[0].b64_json is None and linked.data[0].url is not None
    assert inline.data[0].url is None
    assert fetch(linked.data[0].url).content == base64.b64decode(inline.data[0].b64_json or "")


def test_jobs_keep_object_keys_and_show_urls_or_files(http: httpx.Client, redis_server: RedisProcess) -> None:
    expected = data_of(predict(http, IMAGE).json()["predictions"][0]["images"][0])
    linked = wait_for(http, job_url(submit(http, {**IMAGE, "response_format": "url"})))
    inline = wait_for(http, job_url(submit(http, IMAGE)))
    assert linked["status"] == inline["status"] == "succeeded", (linked.get("error"), inline.get("error"))
    [url] = linked["predictions"][0]["images"]
    assert f"/{linked['id']}/0.png" in url and fetch(url).content == expected
    assert "response_format" not in linked["predictions"][0]
    assert data_of(inline["predictions"][0]["images"][0]) == expected  # read back from the store
    # Each read signs a fresh URL; the job store holds the object URI, not the file.
    again = http.get(job_url(linked)).json()["predictions"][0]["images"][0]
    assert httpx.URL(again).path == httpx.URL(url).path
    db = redis.Redis.from_url(redis_server.url[:-1] + "3")
    stored = b"".join(db.get(key) or b"" for key in db.scan_iter(f"*{inline['id']}*") if db.type(key) == b"string")
    assert f"s3://{BUCKET}/runs/sdxl/{TODAY}/{inline['id']}/0.png".encode() in stored
    assert b"base64" not in stored


def test_the_videos_api_redirects_to_the_file(store_server: ServerProcess, http: httpx.Client) -> None:
    expected = data_of(predict(http, {**VIDEO, "seed": 4}).json()["predictions"][0]["video"])
    with openai.OpenAI(base_url=store_server.url + "/openai/v1", api_key="unused", max_retries=0) as sdk:
        extra = {"seed": 4, "num_inference_steps": 2, "fps": 8}
        video = sdk.videos.create_and_poll(
            prompt="a fox", seconds="1", size="128x128", extra_body=extra, poll_interval_ms=100
        )
        assert video.status == "completed", video.error
        assert sdk.videos.download_content(video.id).content == expected  # the SDK follows the 302
    content = f"/openai/v1/videos/{video.id}/content"
    redirect = http.get(content, headers={"Authorization": "Bearer unused"})
    assert redirect.status_code == 302 and f"/{video.id}/0.mp4" in redirect.headers["location"]
    streamed = http.get(content, params={"redirect": "false"}, headers={"Authorization": "Bearer unused"})
    assert streamed.status_code == 200 and streamed.content == expected
    assert streamed.headers["content-type"] == "video/mp4"


def test_fifty_video_jobs_take_a_few_kb_each_in_redis(http: httpx.Client, redis_server: RedisProcess) -> None:
    db = redis.Redis.from_url(redis_server.url[:-1] + "3")
    # GIFs: the tiny model's smooth 128x128 frames make MP4s of only 3 KB, too close to a record's own size.
    jobs = [submit(http, {**VIDEO, "num_frames": 5, "output_format": "gif", "seed": seed}) for seed in range(50)]
    done = [wait_for(http, job_url(job), timeout=300) for job in jobs]
    assert {job["status"] for job in done} == {"succeeded"}, {job.get("error", {}).get("message") for job in done}
    video = min(len(data_of(job["predictions"][0]["video"])) for job in done[:5])  # read back from the store
    used = sum(db.memory_usage(key) or 0 for job in jobs for key in db.scan_iter(f"*{job['id']}*", count=1000))
    per_job = used / len(jobs)
    print(f"redis bytes per finished video job: {per_job:.0f} (its file: {video} bytes)")
    assert per_job < 4096 and per_job < video / 4, (per_job, video)


def test_the_store_down_refuses_urls_and_keeps_base64_working(
    http: httpx.Client, s3_server: S3Process, store_server: ServerProcess
) -> None:
    s3_server.stop()
    try:
        refused = predict(http, {**IMAGE, "response_format": "url"})
        assert refused.status_code == 503, refused.text
        assert "unreachable" in refused.json()["error"] and int(refused.headers["retry-after"]) > 0
        assert predict(http, IMAGE).status_code == 200
        job = wait_for(http, job_url(submit(http, IMAGE)))  # a b64_json job keeps its files itself meanwhile
        assert job["status"] == "succeeded" and job["predictions"][0]["images"][0].startswith("data:image/png")
        assert submit_url_job_status(http) == 503
    finally:
        s3_server.start()
    deadline = time.monotonic() + 30
    while (back := predict(http, {**IMAGE, "response_format": "url"})).status_code == 503:
        assert time.monotonic() < deadline, back.text
        time.sleep(0.5)
    assert back.status_code == 200, back.text
    fetch(back.json()["predictions"][0]["images"][0])
    assert_no_secrets(store_server.log() + refused.text, s3_server)


def submit_url_job_status(http: httpx.Client) -> int:
    """The status a url job submission gets."""
    return http.post("/v1/models/sdxl/jobs", json={"instances": [{**IMAGE, "response_format": "url"}]}).status_code


def assert_no_secrets(text: str, store: S3Process) -> None:
    """Neither the secret key nor a URL's signature is in `text` (a log, or answers other than the URLs)."""
    assert store.credentials[1] not in text
    assert "X-Amz-Signature" not in text


def test_a_store_error_is_a_502_and_the_next_request_works(http: httpx.Client, s3_server: S3Process) -> None:
    client = s3_server.client()
    for item in client.list_objects_v2(Bucket=BUCKET).get("Contents", []):  # type: ignore[attr-defined]
        client.delete_object(Bucket=BUCKET, Key=item["Key"])  # type: ignore[attr-defined]
    client.delete_bucket(Bucket=BUCKET)  # type: ignore[attr-defined]
    try:
        failed = predict(http, {**IMAGE, "response_format": "url"})
        assert failed.status_code == 502, failed.text
        assert failed.json()["error"] == "the output store failed to store the files (NoSuchBucket (HTTP 404))"
        assert predict(http, IMAGE).status_code == 200
        assert_no_secrets(failed.text, s3_server)
    finally:
        client.create_bucket(Bucket=BUCKET)  # type: ignore[attr-defined]
    assert predict(http, {**IMAGE, "response_format": "url"}).status_code == 200


def test_url_needs_an_output_store(client: httpx.Client, base_server: ServerProcess) -> None:
    refused = predict(client, {**IMAGE, "response_format": "url"})
    assert refused.status_code == 400
    assert "response_format" in refused.text and "--output_store" in refused.text
    inputs = [
        {"name": "prompt", "datatype": "BYTES", "shape": [1], "data": ["a fox"]},
        {"name": "response_format", "datatype": "BYTES", "shape": [1], "data": ["url"]},
    ]
    v2 = client.post("/v2/models/sdxl/infer", json={"inputs": inputs})
    assert v2.status_code == 400 and "--output_store" in v2.text
    item = InferInput("response_format", [1], "BYTES")
    item.set_data_from_numpy(np.array([b"url"], dtype=object), False)
    prompt = InferInput("prompt", [1], "BYTES")
    prompt.set_data_from_numpy(np.array([b"a fox"], dtype=object), False)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        grpc_infer(base_server.grpc_target, InferRequest(model_name="sdxl", infer_inputs=[prompt, item]))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "--output_store" in caught.value.details()
    job = client.post("/v1/models/sdxl/jobs", json={"instances": [{**IMAGE, "response_format": "url"}]})
    assert job.status_code == 400 and "--output_store" in job.text
    bad = predict(client, {**IMAGE, "response_format": "link"})
    assert bad.status_code == 400 and "response_format" in bad.text and "link" in bad.text
    with (
        openai.OpenAI(base_url=base_server.url + "/openai/v1", api_key="unused", max_retries=0) as sdk,
        pytest.raises(openai.BadRequestError, match="--output_store"),
    ):
        sdk.images.generate(prompt="a fox", size="64x64", response_format="url")


def _start(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "kserve_diffusion", *args]
    return subprocess.run(command, env=server_environment(env), capture_output=True, text=True, timeout=120)


def test_an_unreachable_or_missing_store_stops_the_start(tiny_models: dict[str, Path], s3_server: S3Process) -> None:
    secret = "do-not-print-this-secret"
    model = ["--model_id", str(tiny_models["sdxl"]), "--http_port", str(free_port())]
    env = {**s3_server.environment(), "AWS_SECRET_ACCESS_KEY": secret}
    closed = {**env, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"}
    down = _start([*model, "--output_store", f"s3://{BUCKET}/x"], closed)
    assert down.returncode == 2 and "did not answer" in down.stderr, down.stderr[-2000:]
    missing = _start([*model, "--output_store", "s3://no-such-bucket/x"], env)
    assert missing.returncode == 2 and "404" in missing.stderr, missing.stderr[-2000:]
    bad = _start([*model, "--output_store", "https://elsewhere/x"], env)
    assert bad.returncode == 2 and "expected s3://bucket/prefix" in bad.stderr
    without = _start([*model, "--default_response_format", "url"], env)
    assert without.returncode == 2 and "needs --output_store" in without.stderr
    for started in (down, missing, bad, without):
        assert secret not in started.stdout + started.stderr


def test_a_presigned_url_is_refused_after_its_ttl(
    tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> None:
    folder = tmp_path_factory.mktemp("s3rver")
    store = S3Process("s3rver", folder, free_port())  # s3rver checks presigned URLs' expiry; moto does not
    args = ["--model_id", str(tiny_models["sdxl"]), "--output_store", f"s3://{BUCKET}/ttl"]
    args += ["--output_url_ttl_seconds", "2", "--default_response_format", "url"]
    server = start_server(args, folder / "server.log", env=server_environment(store.environment()))
    try:
        with httpx.Client(base_url=server.url, timeout=120) as http:
            answer = predict(http, IMAGE)  # no response_format: the server's default, url
            [url] = answer.json()["predictions"][0]["images"]
        assert "X-Amz-Expires=2" in url and fetch(url).content.startswith(b"\x89PNG")
        time.sleep(3)
        expired = httpx.get(url)
        assert expired.status_code == 403 and b"Request has expired" in expired.content
        assert "X-Amz-Signature" not in server.log()
    finally:
        server.stop()
        store.stop()


@pytest.mark.skipif(not (shutil.which("curl") and shutil.which("jq")), reason="needs curl and jq")
def test_the_url_examples_run_as_written(store_server: ServerProcess, tmp_path: Path) -> None:
    """docs/api.md's URL example, against a server with an output store (the docs' localhost:8070)."""
    blocks = examples("localhost:8070")
    assert blocks and any('"response_format": "url"' in example.code for example in blocks)
    answers = "\n".join(run(example, store_server, tmp_path, "localhost:8070") for example in blocks)
    assert f"/{BUCKET}/runs/sdxl/{TODAY}/" in answers and "X-Amz-Signature" not in answers
    assert (tmp_path / "fox-from-store.png").read_bytes().startswith(b"\x89PNG")
    assert (tmp_path / "fox-from-bucket.png").read_bytes().startswith(b"\x89PNG")  # the README's
