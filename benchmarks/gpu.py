"""GPU mode: full-size SDXL (+ refiner), FLUX.1-dev, Wan2.1 1.3B and I2V 14B, Wan2.2 I2V-A14B and TI2V-5B with
random weights (no download), run
through the server's own runners, device modes and speed options. Latency and peak GPU memory per case,
beside the best published figures for the same GPU class."""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import torch
from kserve_diffusion.api.inputs import NO_INPUTS, InputImages
from kserve_diffusion.api.request import DEFAULT_LIMITS, parse_request
from kserve_diffusion.config import ServerConfig, defaults
from kserve_diffusion.errors import ConfigError
from kserve_diffusion.pipelines import flux, image_runner, quantize, sdxl, wan
from kserve_diffusion.pipelines.base import Runner
from kserve_diffusion.pipelines.image_families import IMAGE_FAMILIES
from kserve_diffusion.testing import image_builders, tiny
from PIL import Image

from benchmarks import architectures
from benchmarks.image_architectures import IMAGE_BUILDERS

DEVICE_MODES = ("cuda", "enable_model_cpu_offload", "enable_sequential_cpu_offload", "group_offload")
SPEED_OPTIONS: dict[str, dict[str, Any]] = {
    "eager": {},
    "fuse_qkv": {"fuse_qkv": True},
    "channels_last": {"channels_last": True},
    "compile regional": {"compile": "regional"},
    "compile full": {"compile": "full"},
    "fp8 + compile regional": {"quantize": "fp8", "compile": "regional"},
    "int8": {"quantize": "int8"},
    "first_block cache": {"cache": "first_block"},
    "first_block cache + fp8 + compile regional": {"cache": "first_block", "quantize": "fp8", "compile": "regional"},
}
SDXL_CPU_OPTIONS = ("eager", "fuse_qkv", "channels_last", "compile regional", "compile full")  # make bench
# Random weights change a lot between steps, so a cache skips far less than with a trained model.
CACHE_NOTE = "cache skipped (random weights: not representative)"
# Published latencies on an H100 (seconds), for the comparison column.
PUBLISHED_H100 = {
    "sdxl": "2.50 eager, 1.47 TensorRT",
    "flux": "6.57 bf16 eager, 4.21 compiled, 2.97 fp8 + compile",
    # SGLang Diffusion's CI on one H100 (issue 27's sources)
    "qwen_image": "13.1 (SGLang CI)",
    "flux2_klein": "0.48 (SGLang CI)",
    "flux2_dev": "25.0 (SGLang CI)",
}
DTYPE_NAMES = {torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float32: "float32"}


@dataclass(frozen=True)
class Case:
    """One benchmark request on one family."""

    label: str
    family: str  # sdxl, flux, or a Wan builder's name (wan, wan-i2v, wan22-i2v, wan22-ti2v)
    fields: dict[str, Any]
    refiner: bool = False
    skipped_modes: tuple[str, ...] = ()  # device modes not worth measuring


def _video(task: str, width: int, height: int, frames: int, steps: int) -> dict[str, Any]:
    picture = {"image": "x"} if task == "img2video" else {}  # the picture itself is made by measure_case
    size = {"video_width": width, "video_height": height, "num_frames": frames, "num_inference_steps": steps}
    return {"task_type": task, **picture, **size}


# This year's image families (issue 27's figures): sequential offload of 6-32B transformers is skipped too.
IMAGE_CASES = tuple(
    Case(
        f"{title} 1024x1024, {steps} steps",
        family,
        {"height": 1024, "width": 1024, "num_inference_steps": steps},
        skipped_modes=("enable_sequential_cpu_offload",),
    )
    for title, family, steps in (
        ("Qwen-Image", "qwen_image", 50),
        ("FLUX.2 [klein] 4B", "flux2_klein", 4),
        ("FLUX.2 [dev]", "flux2_dev", 50),
        ("Z-Image-Turbo", "z_image", 9),
    )
)
# Sequential offload of 5-27B video transformers takes many minutes a run: those cases skip it.
SLOW_FOR_VIDEO = ("enable_sequential_cpu_offload",)


CASES = (
    Case("SDXL base 1024x1024, 30 steps", "sdxl", {"height": 1024, "width": 1024, "num_inference_steps": 30}),
    Case(
        "SDXL base + refiner (high_noise_frac 0.8), 1024x1024, 30 steps",
        "sdxl",
        {"height": 1024, "width": 1024, "num_inference_steps": 30, "high_noise_frac": 0.8},
        refiner=True,
    ),
    Case("FLUX.1-dev 1024x1024, 28 steps", "flux", {"height": 1024, "width": 1024, "num_inference_steps": 28}),
    Case(
        "Wan2.1 1.3B 832x480, 25 frames",
        "wan",
        {"task_type": "text2video", "video_width": 832, "video_height": 480, "num_frames": 25},
    ),
    Case(
        "Wan2.1 1.3B 832x480, 81 frames",
        "wan",
        {"task_type": "text2video", "video_width": 832, "video_height": 480, "num_frames": 81},
    ),
    Case(
        "Wan2.1 I2V 14B 832x480, 33 frames, 20 steps",
        "wan-i2v",
        _video("img2video", 832, 480, 33, 20),
        skipped_modes=SLOW_FOR_VIDEO,
    ),
    Case(
        "Wan2.2 I2V-A14B 832x480, 33 frames, 20 steps",
        "wan22-i2v",
        _video("img2video", 832, 480, 33, 20),
        skipped_modes=SLOW_FOR_VIDEO,
    ),
    Case(
        "Wan2.2 TI2V-5B 1280x704, 33 frames, 20 steps",
        "wan22-ti2v",
        _video("text2video", 1280, 704, 33, 20),
        skipped_modes=SLOW_FOR_VIDEO,
    ),
    Case(
        "Wan2.2 TI2V-5B image-to-video 1280x704, 33 frames, 20 steps",
        "wan22-ti2v",
        _video("img2video", 1280, 704, 33, 20),
        skipped_modes=SLOW_FOR_VIDEO,
    ),
    *IMAGE_CASES,
)


@dataclass(frozen=True)
class Builders:
    """How to make each family's pipelines, and their dtype."""

    sdxl: Callable[[], Any]
    sdxl_refiner: Callable[[Any], Any]
    flux: Callable[[], Any]
    wan: dict[str, Callable[[], Any]]  # per Wan builder name
    dtypes: dict[str, torch.dtype]
    images: dict[str, Callable[[], Any]]  # per image_architectures.IMAGE_BUILDERS name


FULL_SIZE = Builders(
    sdxl=architectures.build_sdxl,
    sdxl_refiner=architectures.build_sdxl_refiner,
    flux=architectures.build_flux,
    wan={
        "wan": architectures.build_wan,
        "wan-i2v": architectures.build_wan_i2v,
        "wan22-i2v": architectures.build_wan22_i2v,
        "wan22-ti2v": architectures.build_wan22_ti2v,
    },
    dtypes={**architectures.DTYPES, **dict.fromkeys(IMAGE_BUILDERS, torch.bfloat16)},
    images={name: build for name, (_, _, build) in IMAGE_BUILDERS.items()},
)
# The same loop with the tiny models on the CPU: how the tests check this mode without a GPU.
TINY = Builders(
    sdxl=tiny.build_sdxl_base,
    sdxl_refiner=lambda base: tiny.build_sdxl_refiner(),
    flux=tiny.build_flux,
    wan=tiny.WAN_BUILDERS,
    dtypes=dict.fromkeys([*architectures.DTYPES, *IMAGE_BUILDERS], torch.float32),
    images={
        "qwen_image": image_builders.build_qwen_image,
        "flux2_dev": image_builders.build_flux2_dev,
        "flux2_klein": image_builders.build_flux2_klein,
        "z_image": image_builders.build_z_image,
    },
)


@contextmanager
def _building_on(device: str, dtype: torch.dtype) -> Iterator[None]:
    """Create parameters directly on `device` in `dtype`: random full-size weights in seconds, not minutes."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def _runner(case: Case, builders: Builders, config: ServerConfig, build_device: str) -> Runner:
    dtype = builders.dtypes[case.family]
    with _building_on(build_device, dtype):
        if case.family == "sdxl":
            base = builders.sdxl()
            refiner = builders.sdxl_refiner(base) if case.refiner else None
        elif case.family == "flux":
            pipeline = builders.flux()
        elif case.family in IMAGE_BUILDERS:
            pipeline = builders.images[case.family]()
        else:
            pipeline = builders.wan[case.family]()
    if config.device != "cuda" and build_device != "cpu":
        for module in (base, refiner) if case.family == "sdxl" else (pipeline,):
            if module is not None:
                module.to("cpu")  # the offload modes start from weights in CPU memory
    if case.family == "sdxl":
        base, refiner = base.to(dtype=dtype), refiner.to(dtype=dtype) if refiner else None
        quantize.quantize_built(base, "sdxl", config)  # the server quantizes while loading: same torchao configs
        return sdxl.assemble(base, refiner, None, config)
    pipeline = pipeline.to(dtype=dtype)
    if case.family == "flux":
        quantize.quantize_built(pipeline, "flux", config)
        return flux.assemble(pipeline, config, "dev")
    if case.family in IMAGE_BUILDERS:
        family, variant, _ = IMAGE_BUILDERS[case.family]
        quantize.quantize_built(pipeline, family, config)
        return image_runner.assemble(pipeline, config, IMAGE_FAMILIES[family], variant)
    quantize.quantize_built(pipeline, "wan", config)
    return wan.assemble(pipeline, config)


class RecordingControl:
    """Stands in for the server's request control: lets every step run and keeps what --cache skipped."""

    def __init__(self) -> None:
        self.cache: tuple[int, int] | None = None

    def on_step(self, pipeline: Any, step: int, timestep: Any, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
        return callback_kwargs

    def cache_skipped(self, skipped: int, total: int) -> None:
        self.cache = (skipped, total)


def _free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def measure_case(case: Case, mode: str, option: str, builders: Builders, runs: int, build_device: str) -> dict:
    """Latency (median of `runs` after a warm-up that includes any compilation) and peak memory of one case."""
    config = replace(
        defaults(),
        device=mode,
        dtype=DTYPE_NAMES[builders.dtypes[case.family]],
        video_dtype=DTYPE_NAMES[builders.dtypes[case.family]],
        **SPEED_OPTIONS[option],
    )
    runner = _runner(case, builders, config, build_device)
    limits = replace(DEFAULT_LIMITS, max_steps=150, max_side=2048, max_frames=81)
    request = runner.check(parse_request({"prompt": "a red fox in the snow", **case.fields}, limits), limits)
    inputs = NO_INPUTS
    if request.task_type == "img2video":
        inputs = InputImages(Image.new("RGB", (request.video_width, request.video_height), (90, 120, 160)))
    on_cuda = torch.cuda.is_available() and mode != "cpu"
    started = time.perf_counter()
    runner.generate(request, 1, inputs)
    warm_up = time.perf_counter() - started
    if on_cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    tally = RecordingControl()
    for _ in range(runs):
        started = time.perf_counter()
        runner.generate(request, 1, inputs, tally)
        if on_cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    peak = torch.cuda.max_memory_allocated() / 2**30 if on_cuda else 0.0
    del runner
    _free()
    return {
        "case": case.label,
        "device mode": mode,
        "option": option,
        "latency (s)": round(statistics.median(times), 3),
        "first call (s)": round(warm_up, 2),
        "peak GPU memory (GiB)": round(peak, 2),
        CACHE_NOTE: f"{tally.cache[0] / tally.cache[1]:.0%}" if tally.cache and tally.cache[1] else "",
        "published H100 (s)": PUBLISHED_H100.get(case.family, "") if mode == "cuda" and option == "eager" else "",
    }


def measure(
    cases: tuple[Case, ...] = CASES,
    modes: tuple[str, ...] = DEVICE_MODES,
    options: tuple[str, ...] = tuple(SPEED_OPTIONS),
    builders: Builders = FULL_SIZE,
    runs: int = 3,
    build_device: str = "cuda",
) -> list[dict]:
    """Every case in every device mode; the speed options on the fastest mode (the first) only."""
    rows = []
    for case in cases:
        for mode in [mode for mode in modes if mode not in case.skipped_modes]:
            for option in options if mode == modes[0] else ("eager",):
                try:
                    rows.append(measure_case(case, mode, option, builders, runs, build_device))
                except torch.OutOfMemoryError:
                    _free()
                    rows.append({"case": case.label, "device mode": mode, "option": option, "latency (s)": "OOM"})
                except ConfigError as exc:  # an option this family or GPU does not take (a cache on SDXL, ...)
                    rows.append({"case": case.label, "device mode": mode, "option": option, "latency (s)": str(exc)})
                except Exception as exc:  # one broken case is a row that says so, not the end of the run
                    _free()
                    failure = f"failed: {type(exc).__name__}: {str(exc)[:200]}"
                    rows.append({"case": case.label, "device mode": mode, "option": option, "latency (s)": failure})
                print(rows[-1], flush=True)
    return rows
