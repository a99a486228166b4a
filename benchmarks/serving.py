"""Serving overhead on the CPU with a tiny SDXL (its VAE downsamples by 8, as the real one does).

For one request at a time: median HTTP v1 end-to-end latency over the median in-process pipeline call
(the runner's `generate`, what the accelerator thread does), the two measured alternately so that the
shared machine's drift hits both. Under load: requests/s with 8 concurrent clients times the in-process
latency (1.0 means the accelerator never waits on HTTP, JSON or encoding), and the p99 latency of
GET /v2/health/ready meanwhile. Cold start: process start to ready.

The pipeline gets all cores but one (torch threads, in the server and in-process alike): that core plays
the GPU, the one left over plays the host CPU that a GPU server answers HTTP and encodes files with.
"""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import torch
from kserve_diffusion.api.request import DEFAULT_LIMITS, parse_request
from kserve_diffusion.config import parse_config
from kserve_diffusion.pipelines import serving_family
from kserve_diffusion.testing import tiny

CLIENTS = 8
# "after": the encode pool (default); "before": encoding on the accelerator thread, as the old scripts did.
ENCODE_MODES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("encode pool (default)", ()),
    ("encode on the accelerator thread", ("--encode_threads", "0")),
)


@dataclass(frozen=True)
class Plan:
    """How much to measure: sizes, steps and repetitions."""

    sizes: tuple[int, ...] = (512, 1024)
    steps: int = 4  # the tiny UNet at 1024x1024 takes about 2 s a step on one core
    repeats: int = 3  # requests per latency measurement
    saturated_requests: int = 8  # spread over the 8 clients
    cold_starts: int = 2


QUICK = Plan(sizes=(128,), steps=2, repeats=2, saturated_requests=8, cold_starts=1)
PIPELINE_THREADS = max(1, (os.cpu_count() or 2) - 1)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """The real server in its own process."""

    def __init__(self, model: Path, *flags: str, env: dict[str, str] | None = None) -> None:
        self.port = _free_port()
        command = [sys.executable, "-m", "kserve_diffusion", "--model_name", "sdxl", "--model_id", str(model)]
        command += ["--device", "cpu"]
        command += ["--http_port", str(self.port), "--grpc_port", str(_free_port()), "--max_queue_size", "32"]
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - open for the server's lifetime, closed by stop()
        self.started = time.perf_counter()
        self.name = ""  # what a shared-queue benchmark calls it (its --pod_name)
        environ = {**os.environ, "OMP_NUM_THREADS": str(PIPELINE_THREADS), **(env or {})}
        if "--provenance" not in flags:  # sections a-k measure serving without the marks; l measures the marks
            flags = (*flags, "--provenance", "off")
        self.process = subprocess.Popen([*command, *flags], stdout=self.log, stderr=subprocess.STDOUT, env=environ)
        self.url = f"http://127.0.0.1:{self.port}"
        self.cold_start = self._wait_ready()

    def _wait_ready(self, timeout: float = 300) -> float:
        while time.perf_counter() - self.started < timeout:
            if self.process.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(f"the server exited:\n{self.log.read().decode()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/v2/health/ready", timeout=1).status_code == 200:
                    return time.perf_counter() - self.started
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError("the server did not become ready")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)
        self.log.close()


def _instance(size: int, steps: int, seed: int = 1) -> dict[str, Any]:
    return {"prompt": "a red fox", "height": size, "width": size, "num_inference_steps": steps, "seed": seed}


def in_process_runner(model: Path) -> Any:
    """The tiny SDXL loaded in this process, with the server's thread count."""
    torch.set_num_threads(PIPELINE_THREADS)
    config = parse_config(["--model_id", str(model), "--device", "cpu"])
    return serving_family(config).load(config)


def _predict(client: httpx.Client, size: int, steps: int) -> float:
    started = time.perf_counter()
    answer = client.post("/v1/models/sdxl:predict", json={"instances": [_instance(size, steps)]})
    answer.raise_for_status()
    answer.json()
    return time.perf_counter() - started


def paired_latency(runner: Any, server: Server, size: int, plan: Plan) -> tuple[float, float]:
    """(median seconds of the in-process pipeline call, median seconds of the same request over HTTP v1),
    measured alternately after one warm-up of each."""
    limits = DEFAULT_LIMITS
    request = runner.check(parse_request(_instance(size, plan.steps), limits), limits)
    pipeline_times, http_times = [], []
    with httpx.Client(base_url=server.url, timeout=600) as client:
        for index in range(plan.repeats + 1):
            started = time.perf_counter()
            runner.generate(request, 1)
            pipeline_seconds = time.perf_counter() - started
            http_seconds = _predict(client, size, plan.steps)
            if index:  # the first of each is the warm-up
                pipeline_times.append(pipeline_seconds)
                http_times.append(http_seconds)
    return statistics.median(pipeline_times), statistics.median(http_times)


def generation_seconds(url: str) -> float:
    """The server's accelerator-thread time so far: the sum of its generation_seconds histogram (every task)."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    prefix = "kserve_diffusion_generation_seconds_sum"
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(prefix))


def saturated(server: Server, size: int, plan: Plan) -> tuple[float, float, float]:
    """(requests per second with 8 concurrent clients, the accelerator thread's busy fraction meanwhile, p99 ms of
    GET /v2/health/ready meanwhile). Busy: the server's own generation time over the wall time, from its
    metrics; 1.0 means the accelerator never waited for the host (HTTP, decoding, encoding)."""
    probes: list[float] = []
    done = threading.Event()

    def probe_health() -> None:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            while not done.is_set():
                started = time.perf_counter()
                client.get("/v2/health/ready").raise_for_status()
                probes.append((time.perf_counter() - started) * 1000)
                time.sleep(0.02)

    def client_loop(count: int) -> None:
        with httpx.Client(base_url=server.url, timeout=600) as client:
            for _ in range(count):
                _predict(client, size, plan.steps)

    per_client = max(1, plan.saturated_requests // CLIENTS)
    prober = threading.Thread(target=probe_health)
    prober.start()
    busy_before = generation_seconds(server.url)
    started = time.perf_counter()
    with ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(client_loop, [per_client] * CLIENTS))
    elapsed = time.perf_counter() - started
    busy = (generation_seconds(server.url) - busy_before) / elapsed
    done.set()
    prober.join()
    p99 = statistics.quantiles(probes, n=100)[98] if len(probes) >= 2 else probes[0]
    return per_client * CLIENTS / elapsed, busy, p99


def measure(plan: Plan) -> dict[str, Any]:
    """Every serving figure for `plan`, with the ratios the goals are stated in."""
    with tempfile.TemporaryDirectory() as folder:
        model = tiny.write("sdxl", Path(folder) / "sdxl")
        runner = in_process_runner(model)
        pipeline: dict[int, float] = {}
        rows, load_rows, cold = [], [], []
        for label, flags in ENCODE_MODES:
            server = Server(model, *flags)
            cold.append(server.cold_start)
            try:
                for size in plan.sizes:
                    if size not in pipeline:
                        pipeline[size], latency = paired_latency(runner, server, size, plan)
                        rows.append(
                            {
                                "size": f"{size}x{size}",
                                "steps": plan.steps,
                                "pipeline call (s)": round(pipeline[size], 3),
                                "HTTP v1 end to end (s)": round(latency, 3),
                                "overhead ratio (goal <= 1.05)": round(latency / pipeline[size], 3),
                            }
                        )
                    rate, busy, p99 = saturated(server, size, plan)
                    load_rows.append(
                        {
                            "size": f"{size}x{size}",
                            "encoding": label,
                            "requests/s (8 clients)": round(rate, 3),
                            "accelerator busy (goal >= 0.97)": round(busy, 3),
                            "throughput x in-process latency": round(rate * pipeline[size], 3),
                            "health p99 (ms, goal <= 50)": round(p99, 1),
                        }
                    )
            finally:
                server.stop()
        for _ in range(plan.cold_starts - 1):
            server = Server(model)
            cold.append(server.cold_start)
            server.stop()
    return {
        "latency": rows,
        "saturated": load_rows,
        "cold_start": [{"process start to ready (s)": round(seconds, 2)} for seconds in cold],
        "pipeline_threads": PIPELINE_THREADS,
    }
