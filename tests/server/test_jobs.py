"""The job API against a real server (memory store): submit, poll, events, cancel, list, errors."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import orjson
import pytest

from tests.conftest import ServerProcess, start_server
from tests.helpers import predict
from tests.jobs_client import OWNER, QUICK, SLOW, job_url, read_events, submit, wait_for, wait_idle

VIDEO = {"prompt": "a fox", "task_type": "text2video", "num_frames": 5, "video_width": 64, "video_height": 64}


@pytest.fixture(scope="module")
def jobs_server(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Images and video, two places in the queue."""
    args = ["--model_id", str(tiny_models["sdxl"]), "--video_model_id", str(tiny_models["wan"])]
    server = start_server([*args, "--max_queue_size", "2"], tmp_path_factory.mktemp("logs") / "jobs.log")
    yield server
    server.stop()


@pytest.fixture
def http(jobs_server: ServerProcess) -> Iterator[httpx.Client]:
    """A client with a bearer token (its jobs belong to it, so it lists them); every job still unfinished after the
    test is cancelled."""
    with httpx.Client(base_url=jobs_server.url, timeout=120, headers=OWNER) as client:
        yield client
        for job in client.get("/v1/models/sdxl/jobs", params={"limit": 100}).json()["jobs"]:
            if job["status"] in ("queued", "running"):
                client.delete(job_url(job))
        wait_idle(client)


def test_a_job_answers_exactly_what_predict_answers(http: httpx.Client) -> None:
    expected = predict(http, QUICK).json()["predictions"]
    job = submit(http, QUICK)
    assert job["status"] in ("queued", "running") and job["id"].startswith("job_") and len(job["id"]) >= 36
    assert set(job) >= {"id", "status", "progress", "eta_seconds", "created_at", "started_at", "finished_at"}
    done = wait_for(http, job_url(job))
    assert done["status"] == "succeeded", done
    assert done["predictions"] == expected
    progress = done.pop("progress")
    assert (progress["step"], progress["total_steps"], progress["fraction"]) == (2, 2, 1.0)
    assert done["started_at"] <= progress["step_at"] <= done["finished_at"]
    assert done["created_at"] <= done["started_at"] <= done["finished_at"]
    assert "error" not in done


def test_prefer_respond_async_turns_predict_into_a_job(http: httpx.Client) -> None:
    body = {"instances": [QUICK]}
    response = http.post("/v1/models/sdxl:predict", json=body, headers={"Prefer": "wait=5, respond-async"})
    assert response.status_code == 202, response.text
    assert response.headers["preference-applied"] == "respond-async"
    location = response.headers["location"]
    assert wait_for(http, location)["predictions"] == predict(http, QUICK).json()["predictions"]
    plain = http.post("/v1/models/sdxl:predict", json=body, headers={"Prefer": "return=minimal"})
    assert plain.status_code == 200 and "predictions" in plain.json()


def test_a_video_job_holds_the_mp4(http: httpx.Client) -> None:
    video = {**VIDEO, "seed": 3}
    done = wait_for(http, job_url(submit(http, video)))
    assert done["status"] == "succeeded", done.get("error")
    assert done["predictions"] == predict(http, video).json()["predictions"]
    assert done["predictions"][0]["video"].startswith("data:video/mp4;base64,")


def test_an_img2img_job_reads_its_input_image_at_submission(http: httpx.Client) -> None:
    [source] = predict(http, QUICK).json()["predictions"][0]["images"]
    edit = {"task_type": "img2img", "prompt": "oil painting", "image": source, "strength": 0.5, "seed": 2}
    edit["num_inference_steps"] = 4
    done = wait_for(http, job_url(submit(http, edit)))
    assert done["status"] == "succeeded", done
    assert done["predictions"] == predict(http, edit).json()["predictions"]
    assert done["progress"]["total_steps"] == 2  # 4 steps x strength 0.5


def test_several_instances_make_one_job(http: httpx.Client) -> None:
    second = {**QUICK, "seed": 8}
    done = wait_for(http, job_url(submit(http, QUICK, second)))
    assert done["predictions"] == predict(http, QUICK, second).json()["predictions"]
    assert done["progress"]["total_steps"] == 4


def test_events_follow_the_job_to_its_end(jobs_server: ServerProcess, http: httpx.Client) -> None:
    job = submit(http, {**SLOW, "num_inference_steps": 15})
    events = read_events(jobs_server.url, job_url(job) + "/events")
    names = [name for name, _, _ in events]
    assert names[0] in ("queued", "running") and names[-1] == "succeeded", names
    assert "running" in names and names.count("progress") >= 3, names
    steps = [data["progress"]["step"] for _, data, _ in events]
    assert steps == sorted(steps) and steps[-1] == 15
    assert events[-1][1]["progress"]["fraction"] == 1.0 and "predictions" not in events[-1][1]


def test_a_late_events_client_gets_the_current_state_then_the_stream_closes(
    jobs_server: ServerProcess, http: httpx.Client
) -> None:
    job = wait_for(http, job_url(submit(http, QUICK)))
    events = read_events(jobs_server.url, job_url(job) + "/events", timeout=10)
    assert [(name, data["status"]) for name, data, _ in events] == [("succeeded", "succeeded")]


def test_a_cancelled_queued_job_never_runs(http: httpx.Client) -> None:
    running = submit(http, SLOW)
    queued = submit(http, QUICK)
    answer = http.delete(job_url(queued))
    assert answer.status_code == 200 and answer.json()["status"] == "cancelled"
    http.delete(job_url(running))
    wait_for(http, job_url(running))
    time.sleep(0.5)
    final = http.get(job_url(queued)).json()
    assert final["status"] == "cancelled" and final["started_at"] is None and final["progress"]["step"] == 0


def test_a_cancelled_running_job_stops_at_its_next_step(jobs_server: ServerProcess, http: httpx.Client) -> None:
    job = submit(http, {**SLOW, "num_inference_steps": 150})
    deadline = time.monotonic() + 60
    while http.get(job_url(job)).json()["progress"]["step"] < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    answer = http.delete(job_url(job))
    assert answer.status_code == 200 and answer.json()["status"] == "cancelled"
    started = time.monotonic()
    assert predict(http, QUICK).status_code == 200  # the accelerator is free again at once
    assert time.monotonic() - started < 10
    final = http.get(job_url(job)).json()
    assert final["status"] == "cancelled" and final["progress"]["step"] < 150 and "predictions" not in final


def test_cancelling_a_finished_job_is_409(http: httpx.Client) -> None:
    job = wait_for(http, job_url(submit(http, QUICK)))
    answer = http.delete(job_url(job))
    assert answer.status_code == 409 and "already succeeded" in answer.json()["error"]
    assert http.get(job_url(job)).json()["status"] == "succeeded"


@pytest.mark.parametrize(
    "job_id", ["job_" + "0" * 40, "nope", "job_" + "g" * 40, "x" * 5000, "job_" + "0" * 40 + "%0Aforged"]
)
@pytest.mark.parametrize("method", ["GET", "DELETE", "EVENTS"])
def test_unknown_jobs_are_404(http: httpx.Client, job_id: str, method: str) -> None:
    path = f"/v1/models/sdxl/jobs/{job_id}" + ("/events" if method == "EVENTS" else "")
    answer = http.request("DELETE" if method == "DELETE" else "GET", path)
    assert answer.status_code == 404, answer.text
    assert len(answer.text) < 400 and "no job" in answer.json()["error"]


def test_another_model_name_is_404(http: httpx.Client) -> None:
    job = wait_for(http, job_url(submit(http, QUICK)))
    for method, path in [
        ("POST", "/v1/models/other/jobs"),
        ("GET", "/v1/models/other/jobs"),
        ("GET", f"/v1/models/other/jobs/{job['id']}"),
        ("DELETE", f"/v1/models/other/jobs/{job['id']}"),
        ("GET", f"/v1/models/other/jobs/{job['id']}/events"),
    ]:
        answer = http.request(method, path, json={"instances": [QUICK]} if method == "POST" else None)
        assert answer.status_code == 404 and "'other' is not served here" in answer.json()["error"], (path, answer.text)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "malformed JSON"),
        (b'{"instances": []}', "between 1 and"),
        (orjson.dumps({"instances": [{**QUICK, "num_inference_steps": 10_000}]}), "num_inference_steps"),
        (orjson.dumps({"instances": [{**QUICK, "width": 65}]}), "width"),
        (orjson.dumps({"instances": [{**QUICK, "colour": "red"}]}), "colour"),
        (
            orjson.dumps({"instances": [{**QUICK, "num_inference_steps": 20, "image_url": "file:///etc/passwd"}]}),
            "image_url",
        ),
    ],
)
def test_bad_submissions_are_400_and_make_no_job(http: httpx.Client, body: bytes, message: str) -> None:
    before = http.get("/v1/models/sdxl/jobs").json()["jobs"]
    answer = http.post("/v1/models/sdxl/jobs", content=body)
    assert answer.status_code == 400 and message in answer.json()["error"], answer.text
    assert http.get("/v1/models/sdxl/jobs").json()["jobs"] == before


def test_the_list_is_newest_first_and_bounded(http: httpx.Client) -> None:
    made = []
    for seed in range(3):  # one at a time: three at once can find the two queue places taken
        made.append(submit(http, {**QUICK, "seed": seed})["id"])
        wait_idle(http)
    listed = http.get("/v1/models/sdxl/jobs", params={"limit": 2}).json()["jobs"]
    assert [job["id"] for job in listed] == made[::-1][:2]
    assert set(listed[0]) == {"id", "status", "created_at"}
    anonymous = httpx.get(http.base_url.join("/v1/models/sdxl/jobs"))  # no identity: nothing is listed
    assert anonymous.status_code == 200 and anonymous.json() == {"jobs": []}
    for limit in ("0", "101", "many"):
        answer = http.get("/v1/models/sdxl/jobs", params={"limit": limit})
        assert answer.status_code == 400 and "limit" in answer.json()["error"], answer.text


def test_a_full_queue_is_503_with_retry_after_at_submission(http: httpx.Client) -> None:
    for _ in range(3):  # one running, two waiting: --max_queue_size 2
        submit(http, SLOW)
    answer = http.post("/v1/models/sdxl/jobs", json={"instances": [QUICK]})
    assert answer.status_code == 503 and int(answer.headers["retry-after"]) >= 1
    assert "queue is full" in answer.json()["error"]


def test_a_full_queue_is_429_on_the_videos_route(jobs_server: ServerProcess, http: httpx.Client) -> None:
    for _ in range(3):
        submit(http, SLOW)
    with (
        openai.OpenAI(base_url=jobs_server.url + "/openai/v1", api_key="unused", max_retries=0) as sdk,
        pytest.raises(openai.RateLimitError) as raised,
    ):
        sdk.videos.create(prompt="a fox", seconds="1", size="64x64")
    assert int(raised.value.response.headers["retry-after"]) >= 1 and "queue is full" in raised.value.message


def test_the_timeout_counts_from_submission(http: httpx.Client) -> None:
    blocker = submit(http, SLOW)
    late = submit(http, {**QUICK, "timeout": 1})
    failed = wait_for(http, job_url(late))
    assert failed["status"] == "failed" and failed["error"]["status"] == 504, failed
    assert "timeout" in failed["error"]["message"]
    http.delete(job_url(blocker))


def test_a_job_outlives_the_connection_that_submitted_it(jobs_server: ServerProcess, http: httpx.Client) -> None:
    body = orjson.dumps({"instances": [{**SLOW, "num_inference_steps": 10}]})
    owner = f"Authorization: {OWNER['Authorization']}\r\n"
    head = f"POST /v1/models/sdxl/jobs HTTP/1.1\r\nHost: x\r\n{owner}Content-Length: {len(body)}\r\n\r\n".encode()
    with socket.create_connection(("127.0.0.1", jobs_server.http_port)) as sock:
        sock.sendall(head + body)
        sock.recv(1)  # the answer has started: the job exists; now leave
    [newest] = http.get("/v1/models/sdxl/jobs", params={"limit": 1}).json()["jobs"]
    assert wait_for(http, job_url(newest))["status"] == "succeeded"


def test_an_events_client_that_leaves_does_not_cancel_the_job(jobs_server: ServerProcess, http: httpx.Client) -> None:
    job = submit(http, {**SLOW, "num_inference_steps": 10})
    with httpx.Client(base_url=jobs_server.url) as other, other.stream("GET", job_url(job) + "/events") as events:
        next(events.iter_lines())
    assert wait_for(http, job_url(job))["status"] == "succeeded"


def test_metrics_and_log_lines_name_jobs_without_their_secret(jobs_server: ServerProcess, http: httpx.Client) -> None:
    job = wait_for(http, job_url(submit(http, QUICK)))
    metrics = http.get("/metrics").text
    assert 'kserve_diffusion_jobs_total{status="succeeded"}' in metrics
    assert "kserve_diffusion_job_store_errors_total" in metrics
    log = jobs_server.log()
    assert f"job={job['id'][:12]}" in log and job["id"] not in log
