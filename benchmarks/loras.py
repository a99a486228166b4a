"""What LoRA adapters cost a request, against the same request without adapters, in one server and one run.

Tiny SDXL at the plan's first size and steps, `--lora_dir` with four adapters of the same shape (diffusers
layout, rank 4) and `--max_loaded_loras 8`:
- first use: a request naming an adapter not loaded yet (read from disk and loaded), each adapter once;
- switching: requests alternate between two loaded adapters, so every request changes the active adapter;
- same adapter: the same loaded adapter request after request (the LoRA layers' own compute, no change).
Every ratio is the median of adjacent pairs' ratios to a request without adapters (a pair sees the same
drift of this shared VM). The switching goal (<= 1.05) is the cached switch over a request without adapters.
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path
from typing import Any

import httpx
from kserve_diffusion.testing import tiny
from kserve_diffusion.testing.adapters import lora_layers, save_diffusers_file

from benchmarks.jobs import _predict as _timed  # one :predict, sent to parsed
from benchmarks.serving import Plan, Server, _instance

ADAPTERS = ("a", "b", "c", "d")


def _with(instance: dict[str, Any], name: str) -> dict[str, Any]:
    return {**instance, "loras": [{"name": name, "scale": 0.8}]}


def measure(plan: Plan) -> list[dict[str, Any]]:
    """First use, switching and same-adapter rows."""
    size = plan.sizes[0]
    instance = _instance(size, plan.steps)
    with tempfile.TemporaryDirectory() as folder:
        model = tiny.write("sdxl", Path(folder) / "sdxl")
        base = tiny.BUILDERS["sdxl"]()
        loras = Path(folder) / "loras"
        for seed, name in enumerate(ADAPTERS):
            layers = lora_layers(base, "sdxl", rank=4, seed=seed)
            save_diffusers_file(base, layers, loras / f"{name}.safetensors")
        server = Server(model, "--lora_dir", str(loras), "--max_loaded_loras", "8")
        try:
            with httpx.Client(base_url=server.url, timeout=600) as client:
                _timed(client, instance)  # warm-up
                first = [(_timed(client, _with(instance, name)), _timed(client, instance)) for name in ADAPTERS]
                pairs = plan.repeats * 3 if size >= 256 else 2  # the --quick smoke run: two pairs
                switching = [
                    (_timed(client, _with(instance, ADAPTERS[index % 2])), _timed(client, instance))
                    for index in range(pairs)
                ]
                _timed(client, _with(instance, "a"))
                same = [(_timed(client, _with(instance, "a")), _timed(client, instance)) for _ in range(pairs)]
        finally:
            server.stop()
    rows = []
    for what, measured in (
        ("first use (read and load)", first),
        ("switching between two loaded adapters", switching),
        ("the same loaded adapter again", same),
    ):
        ratios = sorted(with_lora / without for with_lora, without in measured)
        rows.append(
            {
                "requests with an adapter": what,
                "size": f"{size}x{size}",
                "steps": plan.steps,
                "pairs": len(ratios),
                "with adapter (s)": round(statistics.median(w for w, _ in measured), 3),
                "without (s)": round(statistics.median(n for _, n in measured), 3),
                "ratio (median of pairs)": round(statistics.median(ratios), 3),
                "pair ratios, min to max": f"{ratios[0]:.3f} to {ratios[-1]:.3f}",
            }
        )
    return rows


if __name__ == "__main__":  # this section alone: python -m benchmarks.loras
    for row in measure(Plan()):
        print(row)
