"""The shared job queue: three replicas of the tiny SDXL on one Redis (`make bench`, not --quick).

Makespan: 12 jobs submitted to replica A alone, from the first submission to the last job's end, over the
ideal - the jobs' own run times (each record's finished_at - started_at, measured in the same run) summed
and divided by 3 - so the ratio shows how well the queue spreads the work, whatever three processes on this
machine's cores cost each job. Before the shared queue every job ran where it was submitted: about 3.

Recovery: a long job, its replica killed (SIGKILL) mid-run; the time from the kill to the job's second try
starting on another replica (its record's started_at), against --job_lease_seconds + 2 s.
"""

from __future__ import annotations

import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from kserve_diffusion.testing import tiny

from benchmarks.jobs import redis_server
from benchmarks.serving import Plan, Server, _instance

REPLICAS = 3
JOBS = 12
LEASE_SECONDS = 5  # --job_lease_seconds for the recovery figure (the default 30 is a slower bench, same logic)


def _submit(client: httpx.Client, instance: dict[str, Any]) -> str:
    answer = client.post("/v1/models/sdxl/jobs", json={"instances": [instance]})
    answer.raise_for_status()
    return answer.headers["location"]


def _wait(client: httpx.Client, path: str, done: Any, timeout: float = 600) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = client.get(path).json()
        if done(record):
            return record
        time.sleep(0.05)
    raise RuntimeError(f"job not done after {timeout} s: {record}")


def _makespan(servers: list[Server], plan: Plan) -> dict[str, Any]:
    instance = _instance(plan.sizes[0] // 2, plan.steps * 2)
    with httpx.Client(base_url=servers[0].url, timeout=60) as client:
        for server in servers:  # warm-up: each replica's first generation
            with httpx.Client(base_url=server.url, timeout=600) as warm:
                warm.post("/v1/models/sdxl:predict", json={"instances": [instance]}).raise_for_status()
        started = time.time()
        paths = [_submit(client, {**instance, "seed": seed}) for seed in range(JOBS)]
        records = [_wait(client, path, lambda r: r["status"] in ("succeeded", "failed")) for path in paths]
    assert all(r["status"] == "succeeded" for r in records), records
    makespan = max(r["finished_at"] for r in records) - started
    ideal = sum(r["finished_at"] - r["started_at"] for r in records) / REPLICAS
    return {
        "jobs": JOBS,
        "replicas used": len({r["replica"] for r in records}),
        "makespan (s)": round(makespan, 2),
        "ideal: run times / 3 (s)": round(ideal, 2),
        "makespan / ideal (goal <= 1.15)": round(makespan / ideal, 3),
    }


def _recovery(servers: list[Server], plan: Plan) -> dict[str, Any]:
    instance = _instance(plan.sizes[0], 100)  # long enough to be killed mid-run
    with httpx.Client(base_url=servers[0].url, timeout=60) as client:
        path = _submit(client, instance)
        running = _wait(client, path, lambda r: r["status"] == "running" and r["progress"]["step"] >= 1)
        victim = next(server for server in servers if server.name == running["replica"])
        killed = time.time()
        victim.process.send_signal(signal.SIGKILL)
        victim.process.wait()
        survivor = next(server for server in servers if server is not victim)
        with httpx.Client(base_url=survivor.url, timeout=60) as other:
            again = _wait(other, path, lambda r: r["attempt"] == 2 and r["started_at"] is not None)
            other.delete(path)
    recovery = again["started_at"] - killed
    return {
        "--job_lease_seconds": LEASE_SECONDS,
        "kill to second try running (s)": round(recovery, 2),
        "goal: lease + 2 s": LEASE_SECONDS + 2,
        "within goal": recovery <= LEASE_SECONDS + 2,
    }


def measure(plan: Plan) -> list[dict[str, Any]]:
    """One row: makespan over ideal and recovery after a kill (none without redis-server, or in --quick)."""
    if not shutil.which("redis-server") or plan.sizes[0] < 256:
        return []
    with tempfile.TemporaryDirectory() as folder:
        model = tiny.write("sdxl", Path(folder) / "sdxl")
        redis, url = redis_server(folder)
        servers: list[Server] = []
        try:
            for index in range(REPLICAS):
                name = f"replica-{index}"
                flags = ("--job_store", url, "--pod_name", name, "--job_lease_seconds", str(LEASE_SECONDS))
                servers.append(Server(model, *flags))
                servers[-1].name = name
            row = _makespan(servers, plan)
            row.update(_recovery(servers, plan))
        finally:
            for server in servers:
                if server.process.poll() is None:
                    server.stop()
            redis.terminate()
            redis.wait(timeout=20)
    return [row]
