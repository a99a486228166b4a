"""Two server processes sharing a real Redis job store: any replica answers for any job."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import RedisProcess, ServerProcess, free_port, server_environment, start_server
from tests.helpers import predict
from tests.jobs_client import QUICK, SLOW, job_url, read_events, submit, wait_for, wait_idle

warnings.filterwarnings("ignore", category=DeprecationWarning)  # the SDK marks the Sora routes deprecated


def replica_args(tiny_models: dict[str, Path], store: str, *more: str) -> list[str]:
    """A replica of the same model (images and video) on the shared store."""
    models = ["--model_id", str(tiny_models["sdxl"]), "--video_model_id", str(tiny_models["wan"])]
    return [*models, "--job_store", store, *more]


@pytest.fixture(scope="module")
def replicas(
    tiny_models: dict[str, Path], redis_server: RedisProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """Replicas A and B of model "sdxl" behind one Redis."""
    logs = tmp_path_factory.mktemp("logs")
    first = start_server(replica_args(tiny_models, redis_server.url), logs / "a.log")
    second = start_server(replica_args(tiny_models, redis_server.url), logs / "b.log")
    yield first, second
    first.stop()
    second.stop()


@pytest.fixture
def clients(replicas: tuple[ServerProcess, ServerProcess]) -> Iterator[tuple[httpx.Client, httpx.Client]]:
    """Clients of A and B; jobs left unfinished are cancelled afterwards."""
    with (
        httpx.Client(base_url=replicas[0].url, timeout=120) as a,
        httpx.Client(base_url=replicas[1].url, timeout=120) as b,
    ):
        yield a, b
        for job in a.get("/v1/models/sdxl/jobs", params={"limit": 100}).json()["jobs"]:
            if job["status"] in ("queued", "running"):
                a.delete(job_url(job))
        wait_idle(a)


def test_a_job_submitted_to_a_is_read_from_b(clients: tuple[httpx.Client, httpx.Client]) -> None:
    a, b = clients
    job = submit(a, QUICK)
    done = wait_for(b, job_url(job))
    assert done["status"] == "succeeded" and done["predictions"] == predict(b, QUICK).json()["predictions"]
    assert job["id"] in [listed["id"] for listed in b.get("/v1/models/sdxl/jobs").json()["jobs"]]


def test_b_streams_the_events_of_a_job_running_on_a(
    replicas: tuple[ServerProcess, ServerProcess], clients: tuple[httpx.Client, httpx.Client]
) -> None:
    a, _ = clients
    job = submit(a, {**SLOW, "num_inference_steps": 15})
    events = read_events(replicas[1].url, job_url(job) + "/events")
    names = [name for name, _, _ in events]
    assert names[-1] == "succeeded" and names.count("progress") >= 3, names
    assert events[-1][1]["progress"]["step"] == 15


def test_a_delete_sent_to_b_stops_the_job_running_on_a(
    replicas: tuple[ServerProcess, ServerProcess], clients: tuple[httpx.Client, httpx.Client]
) -> None:
    a, b = clients
    job = submit(a, {**SLOW, "num_inference_steps": 150})
    deadline = time.monotonic() + 60
    while b.get(job_url(job)).json()["progress"]["step"] < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert b.delete(job_url(job)).json()["status"] == "cancelled"
    started = time.monotonic()
    assert predict(a, QUICK).status_code == 200  # A's accelerator is free within a step or so
    assert time.monotonic() - started < 10
    assert a.get(job_url(job)).json()["status"] == "cancelled"
    assert "cancelled from another replica" in replicas[0].log()


def test_a_queued_job_cancelled_from_b_never_runs_on_a(clients: tuple[httpx.Client, httpx.Client]) -> None:
    a, b = clients
    blocker = submit(a, SLOW)
    queued = submit(a, QUICK)
    assert b.delete(job_url(queued)).status_code == 200
    assert b.delete(job_url(queued)).status_code == 409
    a.delete(job_url(blocker))
    wait_for(a, job_url(blocker))
    time.sleep(0.5)
    final = b.get(job_url(queued)).json()
    assert final["status"] == "cancelled" and final["started_at"] is None


def test_a_video_made_on_a_is_downloaded_from_b(replicas: tuple[ServerProcess, ServerProcess]) -> None:
    first, second = (
        openai.OpenAI(base_url=server.url + "/openai/v1", api_key="unused", max_retries=0) for server in replicas
    )
    video = first.videos.create(prompt="a fox", seconds="1", size="64x64", extra_body={"num_inference_steps": 2})
    done = second.videos.poll(video.id, poll_interval_ms=100)
    assert done.status == "completed"
    assert second.videos.download_content(video.id).content == first.videos.download_content(video.id).content
    assert second.videos.delete(video.id).deleted
    with pytest.raises(openai.NotFoundError):
        first.videos.retrieve(video.id)


def test_an_unreachable_redis_stops_the_start(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    store = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    command = [sys.executable, "-m", "kserve_diffusion", "--device", "cpu", *replica_args(tiny_models, store)]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=120, env=server_environment(), cwd=tmp_path, check=False
    )
    assert done.returncode == 2
    assert "--job_store: cannot reach redis://:***@127.0.0.1" in done.stderr and "hunter2" not in done.stderr


def test_losing_redis_refuses_jobs_but_not_predict(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    redis = RedisProcess(tmp_path)
    server = start_server(replica_args(tiny_models, redis.url), tmp_path / "server.log")
    try:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            job = wait_for(http, job_url(submit(http, QUICK)))
            redis.stop()
            answer = http.post("/v1/models/sdxl/jobs", json={"instances": [QUICK]})
            assert answer.status_code == 503 and "job store" in answer.json()["error"], answer.text
            assert ":predict still works" in answer.json()["error"] and answer.headers["retry-after"]
            assert http.get(job_url(job)).status_code == 503
            assert predict(http, QUICK).status_code == 200
            assert http.get("/v2/health/ready").status_code == 200
    finally:
        server.stop()
        redis.stop()


def test_sigterm_fails_the_queued_jobs_it_cannot_run(
    tiny_models: dict[str, Path],
    redis_server: RedisProcess,
    clients: tuple[httpx.Client, httpx.Client],
    tmp_path: Path,
) -> None:
    _, b = clients
    args = replica_args(tiny_models, redis_server.url, "--shutdown_grace_seconds", "1")
    leaving = start_server(args, tmp_path / "leaving.log")
    with httpx.Client(base_url=leaving.url, timeout=60) as http:
        running = submit(http, {**SLOW, "num_inference_steps": 150})
        queued = submit(http, SLOW)
        wait_for(http, job_url(running), ("running",))
    leaving.process.send_signal(signal.SIGTERM)
    assert leaving.process.wait(timeout=60) == 0
    leaving.stop()
    for job in (running, queued):
        final = b.get(job_url(job)).json()
        assert final["status"] == "failed" and final["error"]["status"] == 503, final
        assert "submit it again" in final["error"]["message"]
