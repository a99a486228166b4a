"""`make bench-gpu`'s multi-GPU cases (issue 32): one request over 2 and 4 GPUs with Ulysses, against the same
request on one GPU in the same run.

Each rank is a process that builds the same random full-size weights, joins the group and splits its transformer
the way the server does (kserve_diffusion.parallel), then runs the request in step with the others; rank 0 times
it. A case that needs more GPUs than the machine has is listed as unmeasured. On the CPU (gloo) with the tiny
builders it is the smoke test of tests/model/test_speed.py.
"""

from __future__ import annotations

import os
import socket
import statistics
import time
from dataclasses import replace
from typing import Any

import torch
import torch.multiprocessing as mp
from kserve_diffusion.api.inputs import NO_INPUTS
from kserve_diffusion.api.request import DEFAULT_LIMITS, parse_request
from kserve_diffusion.config import defaults
from kserve_diffusion.parallel.collective import CollectiveObserver, share_cache_decisions
from kserve_diffusion.parallel.group import close_group, enable, open_group
from kserve_diffusion.parallel.plan import ParallelPlan
from kserve_diffusion.parallel.runner import denoisers_of

from benchmarks import gpu

FLUX = gpu.CASES[2]  # FLUX.1-dev 1024x1024, 28 steps: xDiT 1.63 s on 4 H100s (Ulysses, compile and fp8)
WAN_81 = gpu.CASES[4]  # Wan2.1 1.3B 480p, 81 frames: SGLang Diffusion 26.7 s on 2 GPUs
CASES: tuple[tuple[gpu.Case, tuple[int, ...], str], ...] = (
    (FLUX, (2, 4), "eager"),
    (FLUX, (2, 4), "int8"),
    (WAN_81, (2,), "eager"),
)
GOALS = {FLUX.label: "4 GPUs < 1.63 s (xDiT, 4 H100s)", WAN_81.label: "2 GPUs < 26.7 s (SGLang Diffusion)"}


def _port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _rank(rank: int, world: int, port: int, job: dict[str, Any], results: Any) -> None:
    device = job["device"]
    group = open_group(rank, world, "127.0.0.1", port, device, 600, lambda: None) if world > 1 else None
    torch.manual_seed(0)  # the same random weights on every rank
    case, builders = job["case"], getattr(gpu, job["builders"])  # by name: builders hold lambdas
    config = replace(defaults(), device=device, **gpu.SPEED_OPTIONS[job["option"]], ulysses_degree=world)
    config = replace(config, dtype=gpu.DTYPE_NAMES[builders.dtypes[case.family]])
    runner = gpu._runner(case, builders, config, device)  # noqa: SLF001 - the benchmarks' own builder
    observer = None
    if group is not None:
        plan = ParallelPlan(world)
        enable(denoisers_of(runner, case.family, plan), plan, device)
        share_cache_decisions(group.control)
        observer = CollectiveObserver(None, group.control)
    limits = replace(DEFAULT_LIMITS, max_steps=150, max_side=2048, max_frames=81)
    request = runner.check(parse_request({"prompt": "a red fox in the snow", **case.fields}, limits), limits)
    runner.generate(request, 1, NO_INPUTS, observer)  # warm-up
    times = []
    for _ in range(job["runs"]):
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        runner.generate(request, 1, NO_INPUTS, observer)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    if rank == 0:
        results.put(statistics.median(times))
    if group is not None:
        close_group()


def run(case: gpu.Case, degree: int, option: str, builders: str, device: str, runs: int) -> float:
    """The median latency of `case` over `degree` ranks (processes), in seconds."""
    context = mp.get_context("spawn")
    results = context.Queue()
    port = _port()
    job = {"case": case, "option": option, "builders": builders, "device": device, "runs": runs}
    processes = [context.Process(target=_rank, args=(rank, degree, port, job, results)) for rank in range(degree)]
    for process in processes:
        process.start()
    for process in processes:
        process.join()
    failed = [process.exitcode for process in processes if process.exitcode]
    if failed:
        raise RuntimeError(f"{case.label} on {degree} ranks: a rank exited with {failed[0]}")
    return results.get(timeout=10)


def measure(
    cases: tuple[tuple[gpu.Case, tuple[int, ...], str], ...] = CASES,
    builders: str = "FULL_SIZE",
    device: str = "cuda",
    runs: int = 3,
) -> list[dict[str, Any]]:
    """Each case on one rank, then on each degree the machine has the GPUs for; the others listed unmeasured.
    `builders`: gpu.FULL_SIZE or gpu.TINY, by name."""
    available = torch.cuda.device_count() if device == "cuda" else os.cpu_count() or 1
    rows = []
    for case, degrees, option in cases:
        measurable = any(degree <= available for degree in degrees)  # else no GPU time goes to the baseline
        alone = run(case, 1, option, builders, device, runs) if measurable else None
        for degree in degrees:
            row = {"case": case.label, "option": option, "GPUs": degree, "goal": GOALS.get(case.label, "")}
            if degree > available:
                rows.append({**row, "latency (s)": f"unmeasured: needs {degree} GPUs", "speed-up": ""})
                continue
            latency = run(case, degree, option, builders, device, runs)
            speed_up = f"{alone / latency:.2f}x" if alone else ""
            rows.append(
                {**row, "latency (s)": round(latency, 3), "1 GPU (s)": round(alone or 0, 3), "speed-up": speed_up}
            )
    return rows
