"""What a job costs over a synchronous `:predict`, and how soon a step reaches an event stream.

Overhead: the same request (tiny SDXL) as `:predict` and as a job, alternately, each measured from
the client's first byte sent to the predictions read and parsed; the job path is submit, follow its
Server-Sent Events to the end, then GET the job with its predictions. The figure is the median of the
ratios of adjacent pairs: this shared VM drifts by 5-10% within a run, and a pair sees the same drift.

Event delay: a job of many steps at a size where a step takes about 0.1 s; for every `progress` event,
the client's arrival time minus the step's `step_at` (when the accelerator thread finished it; same
machine, same clock). p50/p95/max over the events.

Both on the memory store, and on the Redis store when a `redis-server` is on PATH (not in --quick).
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
from kserve_diffusion.testing import tiny

from benchmarks.serving import Plan, Server, _free_port, _instance

EVENT_SIZE = 512  # about 0.1 s a step for the tiny UNet here: slower than the 20-a-second event limit
EVENT_STEPS = 40


def _follow(client: httpx.Client, path: str) -> list[tuple[dict[str, Any], float]]:
    """Every event's data with its arrival time, until the stream closes."""
    seen = []
    with client.stream("GET", path + "/events") as stream:
        for line in stream.iter_lines():
            if line.startswith("data: "):
                seen.append((orjson.loads(line[6:]), time.time()))
    return seen


def _predict(client: httpx.Client, instance: dict[str, Any]) -> float:
    started = time.perf_counter()
    answer = client.post("/v1/models/sdxl:predict", json={"instances": [instance]})
    answer.raise_for_status()
    answer.json()
    return time.perf_counter() - started


def _job(client: httpx.Client, instance: dict[str, Any]) -> float:
    started = time.perf_counter()
    submitted = client.post("/v1/models/sdxl/jobs", json={"instances": [instance]})
    submitted.raise_for_status()
    path = submitted.headers["location"]
    _follow(client, path)
    done = client.get(path).json()
    assert done["status"] == "succeeded", done
    return time.perf_counter() - started


def _measure(server: Server, plan: Plan, store: str) -> tuple[dict[str, Any], dict[str, Any]]:
    size = plan.sizes[0]
    instance = _instance(size, plan.steps)
    with httpx.Client(base_url=server.url, timeout=600) as client:
        _predict(client, instance)  # warm-up, both paths
        _job(client, instance)
        sync, job = [], []
        for _ in range(max(3, plan.repeats * 4)):  # the shared 2-core VM drifts by 5-10%: more pairs
            sync.append(_predict(client, instance))
            job.append(_job(client, instance))
        steps = EVENT_STEPS if plan.sizes[0] >= 256 else 10
        submitted = client.post("/v1/models/sdxl/jobs", json={"instances": [_instance(EVENT_SIZE, steps)]})
        events = _follow(client, submitted.headers["location"])
    delays = sorted(
        (arrived - data["progress"]["step_at"]) * 1000
        for data, arrived in events
        if data["status"] == "running" and data["progress"]["step_at"]
    )
    ratios = sorted(j / s for j, s in zip(job, sync, strict=True))
    overhead = {
        "store": store,
        "size": f"{size}x{size}",
        "steps": plan.steps,
        "pairs": len(ratios),
        ":predict (s)": round(statistics.median(sync), 3),
        "job: submit, events, GET (s)": round(statistics.median(job), 3),
        "overhead ratio (goal <= 1.05)": round(statistics.median(ratios), 3),
        "pair ratios, min to max": f"{ratios[0]:.3f} to {ratios[-1]:.3f}",
    }
    delay = {
        "store": store,
        "progress events": len(delays),
        "p50 (ms)": round(statistics.median(delays), 1) if delays else None,
        "p95 (ms, goal <= 100)": round(delays[int(0.95 * (len(delays) - 1))], 1) if delays else None,
        "max (ms)": round(delays[-1], 1) if delays else None,
    }
    return overhead, delay


def redis_server(folder: str) -> tuple[subprocess.Popen[bytes], str]:
    """A redis-server without persistence on a free loopback port, and its URL (redis-server must be on PATH)."""
    port = _free_port()
    binary = shutil.which("redis-server") or "redis-server"
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", folder], stdout=subprocess.DEVNULL
    )
    time.sleep(0.5)
    return process, f"redis://127.0.0.1:{port}/0"


def measure(plan: Plan) -> dict[str, list[dict[str, Any]]]:
    """Job overhead and event delay rows, per store."""
    overhead, delay = [], []
    with tempfile.TemporaryDirectory() as folder:
        model = tiny.write("sdxl", Path(folder) / "sdxl")
        stores: list[tuple[str, tuple[str, ...]]] = [("memory", ())]
        redis = None
        if shutil.which("redis-server") and plan.sizes[0] >= 256:  # --quick (128x128): the memory store only
            redis, url = redis_server(folder)
            stores.append(("redis", ("--job_store", url)))
        try:
            for name, flags in stores:
                server = Server(model, *flags)
                try:
                    row, delays = _measure(server, plan, name)
                finally:
                    server.stop()
                overhead.append(row)
                delay.append(delays)
        finally:
            if redis is not None:
                redis.terminate()
                redis.wait(timeout=20)
    return {"overhead": overhead, "delay": delay}
