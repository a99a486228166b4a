"""Helpers for the job routes: submit, wait for a status, read the Server-Sent Events."""

from __future__ import annotations

import time
from typing import Any

import httpx
import orjson

FINISHED = ("succeeded", "failed", "cancelled")
OWNER = {"Authorization": "Bearer jobs-tests"}  # the tests' identity: jobs belong to it, and it lists them
# A request that runs for a few seconds on the tiny SDXL on 2 cores (about 0.1 s a step at 512x512).
SLOW = {"prompt": "a slow fox", "height": 512, "width": 512, "num_inference_steps": 60, "seed": 1}
QUICK = {"prompt": "a quick fox", "height": 64, "width": 64, "num_inference_steps": 2, "seed": 7}


def submit(http: httpx.Client, *instances: dict[str, Any], model: str = "sdxl") -> dict[str, Any]:
    """POST a job; its first record (asserting the 202 and its Location)."""
    response = http.post(f"/v1/models/{model}/jobs", json={"instances": list(instances)})
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["location"] == f"/v1/models/{model}/jobs/{job['id']}"
    return job


def job_url(job: dict[str, Any], model: str = "sdxl") -> str:
    """The job's route."""
    return f"/v1/models/{model}/jobs/{job['id']}"


def wait_for(
    http: httpx.Client, url: str, statuses: tuple[str, ...] = FINISHED, timeout: float = 120
) -> dict[str, Any]:
    """Poll the job until its status is one of `statuses`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = http.get(url)
        assert response.status_code == 200, response.text
        job = response.json()
        if job["status"] in statuses:
            return job
        time.sleep(0.05)
    raise AssertionError(f"job still {job['status']} after {timeout}s: {job}")


def read_events(
    base_url: str, path: str, timeout: float = 120, headers: dict[str, str] | None = None
) -> list[tuple[str, dict[str, Any], float]]:
    """The whole SSE stream: (event, data, arrival time) until the server closes it (as OWNER unless `headers`)."""
    events = []
    with (
        httpx.Client(base_url=base_url, timeout=timeout, headers=OWNER if headers is None else headers) as http,
        http.stream("GET", path, headers={"Accept": "text/event-stream"}) as response,
    ):
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        name = None
        for line in response.iter_lines():
            if line.startswith("event: "):
                name = line[len("event: ") :]
            elif line.startswith("data: "):
                assert name is not None
                events.append((name, orjson.loads(line[len("data: ") :]), time.time()))
                name = None
    return events


def wait_idle(http: httpx.Client, timeout: float = 60) -> None:
    """Wait until the server handles no request (cancelled jobs stop at their next step, not at once)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if "kserve_diffusion_in_flight_requests 0.0" in http.get("/metrics").text:
            return
        time.sleep(0.05)
    raise AssertionError(f"the server still works on something after {timeout}s")
