"""Three replicas taking jobs from one shared queue in a real Redis (with persistence): jobs spread over the
replicas, survive a replica killed (SIGKILL), paused (SIGSTOP) or stopped (SIGTERM), and a Redis restart."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import redis

from tests.conftest import RedisProcess, ServerProcess, start_server
from tests.helpers import predict
from tests.jobs_client import OWNER, read_events, submit, wait_for

LEASE = 3  # --job_lease_seconds: short, so a dead replica's job is taken over within seconds
NAMES = ("a", "b", "c")
# About 3 s on one of three replicas sharing 2 cores; no seed: the server chooses it at submission.
WORK = {"prompt": "a shared fox", "height": 256, "width": 256, "num_inference_steps": 30}
SHORT = {"prompt": "a short fox", "height": 64, "width": 64, "num_inference_steps": 4}


class Trio:
    """Replicas a, b and c of model "sdxl" on one Redis, restarted after a test killed one."""

    def __init__(self, store: RedisProcess, replicas: dict[str, ServerProcess]) -> None:
        self.store = store
        self.replicas = replicas

    def http(self, name: str) -> httpx.Client:
        """A client of replica `name` (as the tests' owner)."""
        return httpx.Client(base_url=self.replicas[name].url, timeout=60, headers=OWNER)

    def heal(self) -> None:
        """Start again every replica a test killed, stopped or paused."""
        for server in self.replicas.values():
            server.process.send_signal(signal.SIGCONT)
            if server.process.poll() is not None:
                server.restart()


@pytest.fixture(scope="module")
def trio(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Trio]:
    """Three replicas on a Redis of their own that keeps its data across a restart (append-only file)."""
    folder = tmp_path_factory.mktemp("queue")
    store = RedisProcess(folder, "--appendonly", "yes", "--appendfsync", "always")
    common = ["--model_id", str(tiny_models["sdxl"]), "--job_store", store.url]
    common += ["--job_lease_seconds", str(LEASE), "--shutdown_grace_seconds", "1", "--max_queue_size", "1"]
    one_thread = {"OMP_NUM_THREADS": "1"}  # three replicas on a 2-core machine: no oversubscribed thread pools
    replicas = {name: start_server([*common, "--pod_name", name], folder / f"{name}.log", one_thread) for name in NAMES}
    trio = Trio(store, replicas)
    yield trio
    for server in replicas.values():
        server.stop()
    trio.store.stop()  # the Redis of the end: a test restarts it


@pytest.fixture
def cluster(trio: Trio) -> Iterator[Trio]:
    """The trio, whole again before and after each test, with nothing left queued or running."""
    trio.heal()
    yield trio
    trio.heal()
    with trio.http("a") as http:
        for job in http.get("/v1/models/sdxl/jobs", params={"limit": 100}).json()["jobs"]:
            if job["status"] in ("queued", "running"):
                http.delete(f"/v1/models/sdxl/jobs/{job['id']}")


def url(job: dict) -> str:
    """The job's route."""
    return f"/v1/models/sdxl/jobs/{job['id']}"


def metric(text: str, name: str) -> float:
    """One sample of the Prometheus text `text`."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"no metric {name}")


def wait_metric(http: httpx.Client, name: str, value: float, timeout: float = 15) -> None:
    """Wait until the replica's /metrics shows `value` for `name` (gauges are refreshed every few seconds)."""
    deadline = time.monotonic() + timeout
    while (now := metric(http.get("/metrics").text, name)) != value:
        assert time.monotonic() < deadline, f"{name} is {now}, not {value}"
        time.sleep(0.2)


def running_on(http: httpx.Client, job: dict, attempt: int = 1, step: int = 1) -> str:
    """Wait until try `attempt` of the job has run `step` steps; the replica running it."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        now = http.get(url(job)).json()
        if now["attempt"] == attempt and now["status"] == "running" and now["progress"]["step"] >= step:
            return now["replica"]
        assert now["status"] in ("queued", "running"), now
        time.sleep(0.05)
    raise AssertionError(f"try {attempt} never ran: {now}")


def test_jobs_sent_to_one_replica_run_on_all_three(cluster: Trio) -> None:
    with cluster.http("a") as a:
        jobs = [submit(a, {**WORK, "seed": seed}) for seed in range(6)]
        assert all(job["status"] == "queued" and job["attempt"] == 0 for job in jobs)
        done = [wait_for(a, url(job)) for job in jobs]
    assert {job["status"] for job in done} == {"succeeded"}
    assert {job["replica"] for job in done} == set(NAMES), [job["replica"] for job in done]
    assert {job["attempt"] for job in done} == {1}
    taken = renewed = 0.0
    for name in NAMES:
        with cluster.http(name) as http:
            text = http.get("/metrics").text
        assert "kserve_diffusion_shared_queue_length " in text
        taken += metric(text, "kserve_diffusion_jobs_taken_total")
        renewed += metric(text, "kserve_diffusion_job_lease_renewals_total")
    assert taken >= 6 and renewed > 0, (taken, renewed)


def test_a_replica_whose_own_queue_is_full_still_takes_job_submissions(cluster: Trio) -> None:
    with cluster.http("a") as a:
        slow = {**WORK, "num_inference_steps": 60}
        with ThreadPoolExecutor(2) as pool:  # one :predict runs on a, one waits: a's queue (size 1) is full
            answers = [pool.submit(predict, a, slow)]
            wait_metric(a, "kserve_diffusion_in_flight_requests", 1.0)
            answers.append(pool.submit(predict, a, slow))
            wait_metric(a, "kserve_diffusion_queue_length", 1.0)
            assert predict(a, SHORT).status_code == 503  # a's own queue is full for :predict
            job = submit(a, SHORT)  # the job waits in Redis, not in a's queue: accepted, run by b or c
            done = wait_for(a, url(job))
            assert done["status"] == "succeeded" and done["replica"] != "a", done
            assert [answer.result().status_code for answer in answers] == [200, 200]


def test_a_killed_replicas_job_is_finished_by_another_with_the_same_result(cluster: Trio) -> None:
    with cluster.http("a") as a:
        job = submit(a, WORK)
        first = running_on(a, job, step=3)
        watcher = next(name for name in NAMES if name != first)
        events: list = []
        reader = threading.Thread(
            target=lambda: events.extend(read_events(cluster.replicas[watcher].url, url(job) + "/events"))
        )
        reader.start()
        time.sleep(0.3)
        killed_at = time.time()
        cluster.replicas[first].process.send_signal(signal.SIGKILL)
        with cluster.http(watcher) as alive:
            second = running_on(alive, job, attempt=2, step=0)
            done = wait_for(alive, url(job))
        reader.join(timeout=60)
    assert done["status"] == "succeeded" and done["attempt"] == 2 and second != first, done
    # Finished within the lease plus the generation time (of the second try), and a little for the hand-over.
    generation = done["finished_at"] - done["started_at"]
    after_kill = done["finished_at"] - killed_at
    assert after_kill <= LEASE + generation + 2, f"done {after_kill:.1f} s after the kill ({generation:.1f} s of work)"
    seed = done["predictions"][0]["seed"]
    with cluster.http(second) as http:
        again = predict(http, {**WORK, "seed": seed}).json()["predictions"][0]
    assert again["images"] == done["predictions"][0]["images"]  # the same request and seed: the same picture
    assert [name for name, _, _ in events][-1] == "succeeded", events[-3:]
    with cluster.http(second) as http:
        assert metric(http.get("/metrics").text, "kserve_diffusion_jobs_retaken_total") >= 1


def test_a_job_killed_twice_fails_and_says_why(cluster: Trio) -> None:
    with cluster.http("a") as a:
        job = submit(a, WORK)
        first = running_on(a, job, step=2)
        cluster.replicas[first].process.send_signal(signal.SIGKILL)
        with cluster.http(next(name for name in NAMES if name != first)) as alive:
            second = running_on(alive, job, attempt=2, step=1)
            cluster.replicas[second].process.send_signal(signal.SIGKILL)
        (last,) = [name for name in NAMES if name not in (first, second)]
        with cluster.http(last) as survivor:
            done = wait_for(survivor, url(job), timeout=LEASE * 4 + 30)
            assert done["status"] == "failed" and done["attempt"] == 2, done
            assert done["error"] == {
                "status": 503,
                "message": "the replicas running this job stopped (2 tries, --job_max_attempts); submit it again",
            }
            running = [j for j in survivor.get("/v1/models/sdxl/jobs").json()["jobs"] if j["status"] == "running"]
            assert running == []


def test_a_paused_replica_does_not_overwrite_or_revive_the_job_it_lost(cluster: Trio) -> None:
    with cluster.http("a") as a:
        finished, cancelled = submit(a, WORK), None
        stale = running_on(a, finished, step=2)
        others = [name for name in NAMES if name != stale]
        cluster.replicas[stale].process.send_signal(signal.SIGSTOP)  # past its lease, then resumed
        with cluster.http(others[0]) as alive:
            done = wait_for(alive, url(finished))
            assert done["status"] == "succeeded" and done["attempt"] == 2 and done["replica"] != stale
            cancelled = submit(alive, WORK)
            runner = running_on(alive, cancelled, step=1)
            assert alive.delete(url(cancelled)).json()["status"] == "cancelled"
            cluster.replicas[stale].process.send_signal(signal.SIGCONT)
            deadline = time.monotonic() + 20
            while "another replica took this job over" not in cluster.replicas[stale].log():
                assert time.monotonic() < deadline, cluster.replicas[stale].log()[-2000:]
                time.sleep(0.1)
            time.sleep(1)
            assert alive.get(url(finished)).json() == done  # the stale try wrote nothing
            assert alive.get(url(cancelled)).json()["status"] == "cancelled" and runner != stale


def test_a_queued_job_cancelled_through_another_replica_never_runs(cluster: Trio) -> None:
    with cluster.http("a") as a, cluster.http("b") as b:
        blockers = [submit(a, {**WORK, "num_inference_steps": 150}) for _ in NAMES]
        for blocker in blockers:
            wait_for(a, url(blocker), ("running",))
        queued = submit(a, SHORT)
        assert a.get(url(queued)).json()["queue_position"] == 0
        wait_metric(b, "kserve_diffusion_shared_queue_length", 1.0)  # every replica reports the shared queue
        assert b.delete(url(queued)).json()["status"] == "cancelled"
        wait_metric(b, "kserve_diffusion_shared_queue_length", 0.0)  # its entry is gone, not merely skipped later
        for blocker in blockers:
            a.delete(url(blocker))
        for blocker in blockers:
            wait_for(a, url(blocker))
        time.sleep(1.5)  # every replica is free and has looked at the queue again
        final = b.get(url(queued)).json()
        assert final["status"] == "cancelled" and final["started_at"] is None and final["attempt"] == 0, final


def test_sigterm_hands_its_running_job_back_and_leaves_the_queue_to_the_others(cluster: Trio) -> None:
    with cluster.http("a") as a:
        long = {**WORK, "num_inference_steps": 60}  # far longer than the 1 s grace
        jobs = [submit(a, {**long, "seed": seed}) for seed in range(5)]  # three run, two wait in the queue
        held, deadline = None, time.monotonic() + 60
        while held is None:  # a job running on b or c, early enough that it cannot finish in the 1 s grace
            assert time.monotonic() < deadline
            states = [a.get(url(job)).json() for job in jobs]
            held = next((s for s in states if s["status"] == "running" and s["replica"] != "a"), None)
        leaving = held["replica"]
        cluster.replicas[leaving].process.send_signal(signal.SIGTERM)
        assert cluster.replicas[leaving].process.wait(timeout=60) == 0
        done = {job["id"]: wait_for(a, url(job)) for job in jobs}
    assert {job["status"] for job in done.values()} == {"succeeded"}, done
    assert "handed back to the shared queue (shutting down)" in cluster.replicas[leaving].log()
    handed_back = done[held["id"]]
    assert handed_back["attempt"] == 2 and handed_back["replica"] != leaving, handed_back
    assert all(job["replica"] != leaving for job in done.values() if job["id"] != held["id"])


def test_a_redis_restart_loses_nothing_it_kept(cluster: Trio) -> None:
    with cluster.http("a") as a:
        running = submit(a, {**WORK, "num_inference_steps": 60})
        running_on(a, running, step=2)
        cluster.store = cluster.store.restart()
        deadline = time.monotonic() + 20
        while a.get(url(running)).status_code == 503:  # while the replicas reconnect, a read may be refused
            assert time.monotonic() < deadline
            time.sleep(0.2)
        done = wait_for(a, url(running), timeout=120)
        assert done["status"] == "succeeded", done
        after = wait_for(a, url(submit(a, SHORT)))
        assert after["status"] == "succeeded"
    assert redis.Redis.from_url(cluster.store.url).xlen("kserve-diffusion:sdxl:queue") == 0
