"""The third attack round against real server processes: jobs that belong to their callers, API keys over REST and
gRPC, bounded event streams, eviction that one client cannot turn against another, accepted jobs that always run,
bounded streamed downloads, and the small leaks and crashes (seconds, input_reference, explain, settings)."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import httpx
import openai
import psutil
import pytest
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub

from tests.conftest import ServerProcess, server_environment
from tests.jobs_client import QUICK, SLOW, job_url, submit, wait_for, wait_idle

warnings.filterwarnings("ignore", category=DeprecationWarning)  # the SDK marks the Sora routes deprecated

KEYS = ("k-alpha-0123456789", "k-beta-9876543210")
ALPHA = {"Authorization": f"Bearer {KEYS[0]}"}
BETA = {"Authorization": f"Bearer {KEYS[1]}"}
USER_HEADER = "X-Forwarded-User"
QUEUE = 4
STREAMS = 8
JOBS_PER_OWNER = 4
# What the libraries printed at start-up before this round (docs/operations.md, "Start-up log").
NOISE = (
    "Failed to load",
    "Could not load this library",
    "Unable to import `torchao` Tensor objects",
    "is an Enum subclass",
    "requires torchvision (not installed)",
    "OpenAI endpoints not registered",
    "ORJSONResponse",
)


@pytest.fixture(scope="module")
def servers(
    tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, ServerProcess]]:
    """ "keyed": SDXL + Wan2.1 with --api_keys from a file, a small queue, few event streams and downloads.
    "proxied": SDXL + Wan2.1 behind an auth proxy's header, small job bounds, --cache / --attention_backend,
    which apply to Wan beside SDXL, and no playground page. Started together: their start-ups overlap."""
    logs = tmp_path_factory.mktemp("logs")
    key_file = logs / "keys.txt"
    key_file.write_text(f"# one key a line\n{KEYS[0]}\n\n{KEYS[1]}\n")
    models = ["--model_id", str(tiny_models["sdxl"]), "--video_model_id", str(tiny_models["wan"])]
    keyed = [*models, "--api_keys", f"@{key_file}", "--max_queue_size", str(QUEUE)]
    keyed += ["--max_event_streams", str(STREAMS), "--max_concurrent_downloads", "2"]
    proxied = [*models, "--job_owner_header", USER_HEADER, "--max_jobs", "12"]
    proxied += ["--max_jobs_per_owner", str(JOBS_PER_OWNER), "--max_queue_size", "16"]
    proxied += ["--cache", "first_block", "--attention_backend", "native", "--playground", "false"]
    started = {
        "keyed": ServerProcess(keyed, logs / "keyed.log"),
        "proxied": ServerProcess(proxied, logs / "proxied.log"),
    }
    try:
        for server in started.values():
            server.wait_ready()
        yield started
    finally:
        for server in started.values():
            server.stop()


@pytest.fixture
def keyed(servers: dict[str, ServerProcess]) -> Iterator[httpx.Client]:
    """Alpha's client of the keyed server; its unfinished jobs are cancelled afterwards."""
    with httpx.Client(base_url=servers["keyed"].url, timeout=120, headers=ALPHA) as http:
        yield http
        for job in http.get("/v1/models/sdxl/jobs", params={"limit": 100}).json()["jobs"]:
            if job["status"] in ("queued", "running"):
                http.delete(job_url(job))
        wait_idle(http)


def as_user(name: str) -> dict[str, str]:
    """The header the auth proxy sets for `name`."""
    return {USER_HEADER: name}


@pytest.fixture
def proxied(servers: dict[str, ServerProcess]) -> Iterator[httpx.Client]:
    """A client of the proxied server (send as_user(...) per request); leaves the server idle."""
    with httpx.Client(base_url=servers["proxied"].url, timeout=120) as http:
        yield http
        wait_idle(http)


# --- 2. API keys -------------------------------------------------------------------------------------------------


def test_api_keys_guard_every_route_but_probes_and_metrics(
    servers: dict[str, ServerProcess], keyed: httpx.Client
) -> None:
    url = servers["keyed"].url
    guarded = [
        ("POST", "/v1/models/sdxl:predict", {"instances": [QUICK]}),
        (
            "POST",
            "/v2/models/sdxl/infer",
            {"inputs": [{"name": "prompt", "shape": [1], "datatype": "BYTES", "data": ["x"]}]},
        ),
        ("POST", "/v1/models/sdxl/jobs", {"instances": [QUICK]}),
        ("GET", "/v1/models/sdxl/jobs", None),
        ("GET", "/v2/models/sdxl", None),
        ("GET", "/openai/v1/models", None),
        ("GET", "/v1/models/sdxl/loras", None),
        ("GET", "/v1/models/sdxl/capabilities", None),
    ]
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEYS[0]}, {"Authorization": "Basic x"}):
        for method, path, body in guarded:
            answer = httpx.request(method, url + path, json=body, headers=headers, timeout=30)
            assert answer.status_code == 401, (method, path, answer.text)
            assert "API key" in answer.text and answer.headers["www-authenticate"].startswith("Bearer")
    open_paths = ("/", "/v2/health/live", "/v2/health/ready", "/v2/models/sdxl/ready", "/v1/models/sdxl", "/metrics")
    # The playground's files hold no data: the page asks for the key and sends it with each call it makes.
    for path in (*open_paths, "/playground/", "/playground/api.js"):
        assert httpx.get(url + path, timeout=30).status_code == 200, path
    assert keyed.post("/v1/models/sdxl:predict", json={"instances": [QUICK]}).status_code == 200
    assert httpx.post(url + "/v1/models/sdxl:predict", json={"instances": [QUICK]}, headers=BETA).status_code == 200
    denied = openai.OpenAI(base_url=url + "/openai/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        denied.images.generate(prompt="a fox", size="64x64")
    allowed = openai.OpenAI(base_url=url + "/openai/v1", api_key=KEYS[1], max_retries=0)
    assert allowed.images.generate(prompt="a fox", size="64x64", extra_body={"num_inference_steps": 2}).data
    log = servers["keyed"].log()
    assert KEYS[0] not in log and KEYS[1] not in log and "wrong" not in log


def test_playground_can_be_turned_off(servers: dict[str, ServerProcess]) -> None:
    url = servers["proxied"].url
    assert httpx.get(url + "/playground/", timeout=10).status_code == 404
    assert httpx.get(url + "/", headers={"Accept": "text/html"}, timeout=10).json() == {"status": "alive"}
    assert httpx.get(url + "/v1/models/sdxl/capabilities", timeout=30).status_code == 200  # the API stays


def test_api_keys_guard_grpc(servers: dict[str, ServerProcess]) -> None:
    prompt = pb.ModelInferRequest.InferInputTensor(name="prompt", datatype="BYTES", shape=[1])
    prompt.contents.bytes_contents.append(b"a fox")
    request = pb.ModelInferRequest(model_name="sdxl", inputs=[prompt])
    for name, value in (("height", 64), ("width", 64), ("num_inference_steps", 2)):
        request.parameters[name].int64_param = value
    with grpc.insecure_channel(servers["keyed"].grpc_target) as channel:
        stub = GRPCInferenceServiceStub(channel)
        assert stub.ServerReady(pb.ServerReadyRequest(), timeout=30).ready  # probes carry no key
        assert stub.ModelReady(pb.ModelReadyRequest(name="sdxl"), timeout=30).ready
        for metadata in ((), (("authorization", "Bearer wrong"),)):
            for call, message in (
                (stub.ModelInfer, request),
                (stub.ModelMetadata, pb.ModelMetadataRequest(name="sdxl")),
            ):
                with pytest.raises(grpc.RpcError) as raised:
                    call(message, metadata=metadata, timeout=30)
                assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED and "API key" in raised.value.details()
        answer = stub.ModelInfer(request, metadata=(("authorization", f"Bearer {KEYS[0]}"),), timeout=120)
        assert answer.raw_output_contents or answer.outputs


# --- 1. Jobs belong to their callers -----------------------------------------------------------------------------


def test_another_callers_jobs_are_404_everywhere(servers: dict[str, ServerProcess], keyed: httpx.Client) -> None:
    url = servers["keyed"].url
    job = wait_for(keyed, job_url(submit(keyed, QUICK)))
    running = submit(keyed, {**SLOW, "num_inference_steps": 150})
    with httpx.Client(base_url=url, timeout=60, headers=BETA) as beta:
        for target in (job, running):
            for method, suffix in (("GET", ""), ("GET", "/events"), ("DELETE", "")):
                answer = beta.request(method, job_url(target) + suffix)
                assert answer.status_code == 404 and "no job with this id" in answer.text, (method, suffix)
        assert beta.get("/v1/models/sdxl/jobs").json() == {"jobs": []}
    assert keyed.get(job_url(running)).json()["status"] in ("queued", "running")  # beta's DELETE changed nothing
    listed = [j["id"] for j in keyed.get("/v1/models/sdxl/jobs").json()["jobs"]]
    assert job["id"] in listed and running["id"] in listed
    assert keyed.get(job_url(job)).json()["predictions"]


def test_another_callers_videos_are_404_everywhere(servers: dict[str, ServerProcess]) -> None:
    url = servers["keyed"].url + "/openai/v1"
    alpha = openai.OpenAI(base_url=url, api_key=KEYS[0], max_retries=0)
    beta = openai.OpenAI(base_url=url, api_key=KEYS[1], max_retries=0)
    video = alpha.videos.create_and_poll(
        prompt="a fox", seconds="1", size="64x64", extra_body={"num_inference_steps": 2}, poll_interval_ms=100
    )
    assert video.status == "completed"
    for attempt in (
        lambda: beta.videos.retrieve(video.id),
        lambda: beta.videos.download_content(video.id),
        lambda: beta.videos.delete(video.id),
    ):
        with pytest.raises(openai.NotFoundError):
            attempt()
    assert [v.id for v in beta.videos.list().data] == []
    assert [v.id for v in alpha.videos.list().data][:1] == [video.id]
    content = alpha.videos.download_content(video.id)
    assert content.content[4:8] == b"ftyp" and content.response.headers["content-length"] == str(len(content.content))
    assert alpha.videos.delete(video.id).deleted


def test_the_proxy_header_is_the_identity_and_anonymous_jobs_are_never_listed(proxied: httpx.Client) -> None:
    mine = proxied.post("/v1/models/sdxl/jobs", json={"instances": [QUICK]}, headers=as_user("ann")).json()
    anonymous = proxied.post("/v1/models/sdxl/jobs", json={"instances": [QUICK]}).json()
    wait_for(proxied, job_url(anonymous))  # reachable by its id alone, as before
    assert proxied.get(job_url(mine), headers=as_user("bob")).status_code == 404
    assert proxied.get(job_url(mine), headers=as_user("ann")).json()["status"] in ("queued", "running", "succeeded")
    assert proxied.get(job_url(mine)).status_code == 404  # no identity: not the owner either
    assert proxied.get("/v1/models/sdxl/jobs").json() == {"jobs": []}
    listed = proxied.get("/v1/models/sdxl/jobs", headers=as_user("ann")).json()["jobs"]
    assert [job["id"] for job in listed] == [mine["id"]]


# --- 4. Event streams counted at admission ----------------------------------------------------------------------


def test_a_burst_of_event_streams_is_capped_at_admission(
    servers: dict[str, ServerProcess], keyed: httpx.Client
) -> None:
    job = submit(keyed, {**SLOW, "num_inference_steps": 150})
    url = servers["keyed"].url + job_url(job) + "/events"

    async def burst() -> tuple[list[int], float]:
        async with httpx.AsyncClient(timeout=30, headers=ALPHA, limits=httpx.Limits(max_connections=100)) as http:

            async def connect() -> int:
                async with http.stream("GET", url) as answer:
                    if answer.status_code == 200:
                        await asyncio.sleep(1.5)  # hold the stream while the others connect
                    return answer.status_code

            async def probe() -> float:
                await asyncio.sleep(0.3)
                started = time.perf_counter()
                assert (await http.get(servers["keyed"].url + "/v2/health/ready")).status_code == 200
                return time.perf_counter() - started

            *codes, ready_seconds = await asyncio.gather(*(connect() for _ in range(60)), probe())
            return codes, ready_seconds

    codes, ready_seconds = asyncio.run(burst())
    assert codes.count(200) == STREAMS and codes.count(503) == 60 - STREAMS, codes
    assert ready_seconds < 1.0
    with (
        httpx.Client(base_url=servers["keyed"].url, timeout=10, headers=ALPHA) as again,
        again.stream("GET", job_url(job) + "/events") as answer,
    ):
        assert answer.status_code == 200  # every slot came back


# --- 6. An accepted job runs ---------------------------------------------------------------------------------------


def test_every_accepted_job_runs_however_many_arrive_at_once(
    servers: dict[str, ServerProcess], keyed: httpx.Client
) -> None:
    def send(seed: int) -> httpx.Response:
        instances = [{**QUICK, "seed": seed}] * (3 if seed % 5 == 0 else 1)  # some jobs of three instances
        return httpx.post(
            servers["keyed"].url + "/v1/models/sdxl/jobs", json={"instances": instances}, headers=ALPHA, timeout=60
        )

    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(send, range(20)))
    accepted = [answer.json() for answer in answers if answer.status_code == 202]
    refused = [answer for answer in answers if answer.status_code != 202]
    assert accepted and all(answer.status_code == 503 and answer.headers["retry-after"] for answer in refused)
    ended = [wait_for(keyed, job_url(job))["status"] for job in accepted]
    assert ended == ["succeeded"] * len(accepted), ended


# --- 5. One caller cannot evict another's results; a bound per caller --------------------------------------------


def test_submit_and_cancel_pairs_do_not_evict_anothers_result(proxied: httpx.Client) -> None:
    victim = proxied.post("/v1/models/sdxl/jobs", json={"instances": [QUICK]}, headers=as_user("victim")).json()
    with httpx.Client(base_url=proxied.base_url, timeout=60, headers=as_user("victim")) as theirs:
        assert wait_for(theirs, job_url(victim))["status"] == "succeeded"
    for _ in range(40):  # more than --max_jobs (12) pairs
        made = proxied.post("/v1/models/sdxl/jobs", json={"instances": [SLOW]}, headers=as_user("mallory"))
        assert made.status_code == 202, made.text
        proxied.delete(job_url(made.json()), headers=as_user("mallory"))
    kept = proxied.get(job_url(victim), headers=as_user("victim"))
    assert kept.status_code == 200 and kept.json()["predictions"][0]["images"]


def test_one_caller_holds_at_most_its_bound(proxied: httpx.Client) -> None:
    greedy = as_user("greedy")
    held = [
        proxied.post("/v1/models/sdxl/jobs", json={"instances": [{**SLOW, "num_inference_steps": 150}]}, headers=greedy)
        for _ in range(JOBS_PER_OWNER)
    ]
    assert [answer.status_code for answer in held] == [202] * JOBS_PER_OWNER
    refused = proxied.post("/v1/models/sdxl/jobs", json={"instances": [QUICK]}, headers=greedy)
    assert refused.status_code == 429 and "--max_jobs_per_owner" in refused.json()["error"]
    assert refused.headers["retry-after"]
    other = proxied.post("/v1/models/sdxl/jobs", json={"instances": [QUICK]}, headers=as_user("patient"))
    assert other.status_code == 202
    for answer in held:
        proxied.delete(job_url(answer.json()), headers=greedy)


# --- 8. Downloads are streamed and bounded ------------------------------------------------------------------------


def test_concurrent_downloads_do_not_copy_the_result(servers: dict[str, ServerProcess], proxied: httpx.Client) -> None:
    big = {**QUICK, "height": 512, "width": 512, "num_images": 4}
    owner = as_user("reader")
    with httpx.Client(base_url=proxied.base_url, timeout=60, headers=owner) as reader:
        made = submit(reader, *([big] * 4))
        assert wait_for(reader, job_url(made))["status"] == "succeeded"
        size = len(reader.get(job_url(made)).content)
    assert size > 8_000_000, size
    process = psutil.Process(servers["proxied"].process.pid)
    before = process.memory_info().rss

    def download(_: int) -> int:
        with httpx.Client(base_url=servers["proxied"].url, timeout=60, headers=owner) as http:
            answer = http.get(job_url(made))
            return len(answer.content) if answer.status_code == 200 else answer.status_code

    with ThreadPoolExecutor(8) as pool:
        sizes = list(pool.map(download, range(8)))
    grown = process.memory_info().rss - before
    assert sizes == [size] * 8
    assert grown < 2 * size, f"8 readers of {size} bytes grew the server by {grown} bytes"


def test_downloads_beyond_the_bound_are_503(servers: dict[str, ServerProcess], keyed: httpx.Client) -> None:
    big = {**QUICK, "height": 512, "width": 512, "num_images": 4}
    job = wait_for(keyed, job_url(submit(keyed, *([big] * 4))))
    url = servers["keyed"].url + job_url(job)
    with (
        httpx.Client(timeout=30, headers=ALPHA) as first,
        httpx.Client(timeout=30, headers=ALPHA) as second,
        first.stream("GET", url) as one,
        second.stream("GET", url) as two,
    ):
        assert one.status_code == two.status_code == 200  # neither read: both slots stay taken
        busy = httpx.get(url, headers=ALPHA, timeout=30)
        assert busy.status_code == 503 and "--max_concurrent_downloads" in busy.text, busy.text
        assert busy.headers["retry-after"]
    assert len(httpx.get(url, headers=ALPHA, timeout=60).content) > 8_000_000  # the slots came back


# --- 9, 11, 15: small leaks and crashes --------------------------------------------------------------------------


@pytest.mark.parametrize("seconds", ["²", "③", "①", "١٢", "4.0", " ", "-1"])
def test_seconds_takes_ascii_digits_only(servers: dict[str, ServerProcess], seconds: str) -> None:
    url = servers["proxied"].url
    before = servers["proxied"].log().count("Traceback")
    with httpx.Client(base_url=url, timeout=30) as http:
        answer = http.post("/openai/v1/videos", json={"prompt": "a fox", "seconds": seconds})
        assert answer.status_code == 400 and answer.json()["error"]["param"] == "seconds", answer.text
        assert http.get("/v2/health/ready").status_code == 200  # the same keep-alive connection still serves
    assert servers["proxied"].log().count("Traceback") == before


def test_input_reference_of_the_wrong_type_is_not_echoed(servers: dict[str, ServerProcess]) -> None:
    secret = "https://bucket.example/pic.png?X-Amz-Signature=0123secret4567"
    for value in ({"url": secret}, [secret], 7):
        answer = httpx.post(
            servers["proxied"].url + "/openai/v1/videos",
            json={"prompt": "a fox", "input_reference": value},
            timeout=30,
        )
        assert answer.status_code == 400 and "input_reference" in answer.text, answer.text
        assert "secret" not in answer.text and "bucket" not in answer.text
    assert "0123secret4567" not in servers["proxied"].log()


def test_explain_names_what_is_wrong(servers: dict[str, ServerProcess]) -> None:
    answer = httpx.post(servers["proxied"].url + "/v1/models/sdxl:explain", json={"instances": [QUICK]}, timeout=30)
    assert answer.status_code == 400
    assert answer.json()["error"].startswith("explain: this server has no explainer"), answer.text
    assert "model_version" not in answer.text


# --- 14, and a clean start-up ---------------------------------------------------------------------------------


def test_speed_options_apply_to_wan_beside_sdxl(proxied: httpx.Client, servers: dict[str, ServerProcess]) -> None:
    video = {"prompt": "a fox", "task_type": "text2video", "num_frames": 5, "video_width": 64, "video_height": 64}
    answer = proxied.post("/v1/models/sdxl:predict", json={"instances": [{**video, "num_inference_steps": 4}]})
    assert answer.status_code == 200 and answer.json()["predictions"][0]["cache"]["total_layers"] > 0
    image = proxied.post("/v1/models/sdxl:predict", json={"instances": [QUICK]})
    assert image.status_code == 200 and "cache" not in image.json()["predictions"][0]
    log = servers["proxied"].log()
    assert "--cache first_block applies to the Wan/FLUX model; sdxl runs without it" in log
    assert "attention backend native" in log


def test_the_start_up_log_is_clean(servers: dict[str, ServerProcess]) -> None:
    for server in servers.values():
        log = server.log()
        for noise in NOISE:
            assert noise not in log, (noise, log[:3000])
        assert "OpenAI Images and Videos routes are served under /openai/v1" in log


# --- 12. Settings are finite -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "flags",
    [
        ["--job_ttl_seconds", "1e400"],
        ["--request_timeout", "inf"],
        ["--cache_threshold", "inf"],
        ["--shutdown_grace_seconds=-inf"],
        ["--job_ttl_seconds", "nan", "--job_store", "redis://127.0.0.1:1/0"],
    ],
)
def test_infinite_settings_stop_the_start_with_one_line(flags: list[str], tmp_path: Path) -> None:
    command = [sys.executable, "-m", "kserve_diffusion", "--device", "cpu", *flags]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=60, env=server_environment(), cwd=tmp_path, check=False
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("kserve-diffusion: error:")]
    assert len(errors) == 1 and re.search(r"expected a finite number", errors[0]), done.stderr[-2000:]


def test_the_submit_routes_link_to_the_routes_that_take_their_ids(servers: dict[str, ServerProcess]) -> None:
    """make fuzz follows these links (schemathesis' stateful phase), so it reaches reads, cancels, events and content
    with real ids, not only unknown ones."""
    schema = httpx.get(servers["proxied"].url + "/openapi.json", timeout=30).json()
    operations = {op["operationId"] for path in schema["paths"].values() for op in path.values() if "operationId" in op}
    submit_links = schema["paths"]["/v1/models/{model_name}/jobs"]["post"]["responses"]["202"]["links"]
    video_links = schema["paths"]["/openai/v1/videos"]["post"]["responses"]["200"]["links"]
    assert set(submit_links) == {"ReadJob", "CancelJob", "JobEvents"}
    assert set(video_links) == {"RetrieveVideo", "DeleteVideo", "VideoContent"}
    for link in [*submit_links.values(), *video_links.values()]:
        assert link["operationId"] in operations


def test_the_playground_asks_for_the_key_and_sends_it(servers: dict[str, ServerProcess], browser) -> None:
    """Last in this module: the browser fixture holds an event loop until the module ends."""
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"{servers['keyed'].url}/playground/")  # the page's own files need no key
    page.wait_for_function("document.querySelector('#model').textContent.includes('asks for an API key')")
    assert page.locator("#api_key").is_visible()
    page.locator("#api_key").fill(KEYS[0])
    page.locator("#api_key").press("Tab")  # the change: the model is read again, with the key
    page.wait_for_selector("#task_type option", state="attached")
    for name, value in {"width": 64, "height": 64, "num_inference_steps": 2}.items():
        page.locator(f"#{name}").fill(str(value))
    page.get_by_role("button", name="Generate").click()
    page.wait_for_selector("#gallery figure img", timeout=120_000)  # the job and its events sent the key
    page.get_by_role("button", name="Copy as curl").click()
    command = page.locator("#curl-command").input_value()
    assert '"Authorization: Bearer $API_KEY"' in command and KEYS[0] not in command
    context.close()
