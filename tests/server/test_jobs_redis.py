"""Two server processes sharing a real Redis job store: any replica answers for any job."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import redis

from tests.conftest import RedisProcess, ServerProcess, free_port, server_environment, start_server
from tests.helpers import predict
from tests.jobs_client import OWNER, QUICK, SLOW, job_url, read_events, submit, wait_for, wait_idle

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
        httpx.Client(base_url=replicas[0].url, timeout=120, headers=OWNER) as a,
        httpx.Client(base_url=replicas[1].url, timeout=120, headers=OWNER) as b,
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


def test_a_delete_sent_to_the_other_replica_stops_the_running_job(
    replicas: tuple[ServerProcess, ServerProcess], clients: tuple[httpx.Client, httpx.Client]
) -> None:
    a, b = clients
    job = submit(a, {**SLOW, "num_inference_steps": 150})
    deadline = time.monotonic() + 60
    while (now := b.get(job_url(job)).json())["progress"]["step"] < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    names = [f"{socket.gethostname()}:{server.process.pid}" for server in replicas]  # hostname:pid without POD_NAME
    runner = names.index(now["replica"])
    other = clients[1 - runner]
    assert other.delete(job_url(job)).json()["status"] == "cancelled"
    started = time.monotonic()
    assert predict(clients[runner], QUICK).status_code == 200  # its accelerator is free within a step or so
    assert time.monotonic() - started < 10
    assert a.get(job_url(job)).json()["status"] == "cancelled"
    assert "cancelled from another replica" in replicas[runner].log()


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


def test_idle_event_streams_do_not_starve_the_store(
    replicas: tuple[ServerProcess, ServerProcess],
    clients: tuple[httpx.Client, httpx.Client],
    redis_server: RedisProcess,
) -> None:
    """The attack: each SSE stream held a Redis pub/sub connection of its own, and ~100 idle ones took every
    connection of the pool: job reads became 503s and a finishing job lost its result."""
    a, b = clients
    blocker = submit(a, {**SLOW, "num_inference_steps": 150})
    url = replicas[0].url + job_url(blocker) + "/events"

    async def scenario() -> tuple[dict, int]:
        limits = httpx.Limits(max_connections=200)
        async with (
            httpx.AsyncClient(timeout=60, headers=OWNER, limits=limits) as http,
            contextlib.AsyncExitStack() as held,
        ):
            for _ in range(150):
                answer = await held.enter_async_context(http.stream("GET", url))
                assert answer.status_code == 200
            connections = len(redis.Redis.from_url(redis_server.url).client_list())
            a.delete(job_url(blocker))
            done = await asyncio.to_thread(wait_for, a, job_url(submit(a, QUICK)))
            return done, connections

    done, connections = asyncio.run(scenario())
    assert done["status"] == "succeeded" and done["predictions"], done
    assert b.get(job_url(done)).json()["predictions"] == done["predictions"]
    assert connections < 40, f"{connections} Redis connections with 150 event streams open"


@pytest.fixture(scope="module")
def fragile(
    tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[RedisProcess, ServerProcess]]:
    """A replica on a Redis of its own, run with an LRU eviction policy (which the replica warns about), for the
    tests that pause it or take records away."""
    folder = tmp_path_factory.mktemp("fragile")
    store = RedisProcess(folder, "--maxmemory", "200mb", "--maxmemory-policy", "allkeys-lru")
    server = start_server(replica_args(tiny_models, store.url), folder / "server.log")
    yield store, server
    server.stop()
    store.stop()


def test_an_lru_policy_is_warned_about(fragile: tuple[RedisProcess, ServerProcess]) -> None:
    assert "maxmemory-policy is allkeys-lru" in fragile[1].log() and "noeviction" in fragile[1].log()


def test_a_jobs_end_is_written_once_redis_is_back(fragile: tuple[RedisProcess, ServerProcess]) -> None:
    store, server = fragile
    with httpx.Client(base_url=server.url, timeout=60, headers=OWNER) as http:
        job = submit(http, {**SLOW, "num_inference_steps": 20})
        wait_for(http, job_url(job), ("running",))
        store.process.send_signal(signal.SIGSTOP)  # Redis stops answering while the job ends
        try:
            deadline = time.monotonic() + 60
            while "the job store cannot record it yet, retrying" not in server.log():
                assert time.monotonic() < deadline, server.log()[-3000:]
                time.sleep(0.2)
        finally:
            store.process.send_signal(signal.SIGCONT)
        done = wait_for(http, job_url(job), timeout=60)
        assert done["status"] == "succeeded" and done["predictions"][0]["images"], done
        assert "kserve_diffusion_job_end_retries_total" in http.get("/metrics").text


def test_a_record_that_vanishes_is_store_lost_not_cancelled(fragile: tuple[RedisProcess, ServerProcess]) -> None:
    store, server = fragile
    with httpx.Client(base_url=server.url, timeout=60, headers=OWNER) as http:
        cancelled_before = _metric(http, 'kserve_diffusion_jobs_total{status="cancelled"}')
        job = submit(http, {**SLOW, "num_inference_steps": 150})
        wait_for(http, job_url(job), ("running",))
        redis.Redis.from_url(store.url).delete(f"kserve-diffusion:sdxl:job:{job['id']}")  # as an LRU eviction would
        wait_idle(http, timeout=30)  # the job stopped at its next step: the accelerator is free
        assert http.get(job_url(job)).status_code == 404
        assert _metric(http, "kserve_diffusion_job_store_lost_total") == 1.0
        assert _metric(http, 'kserve_diffusion_jobs_total{status="cancelled"}') == cancelled_before
    assert "the job store no longer holds this job" in server.log()


def _metric(http: httpx.Client, name: str) -> float:
    for line in http.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"no metric {name}")
