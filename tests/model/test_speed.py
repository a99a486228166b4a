"""Speed options (--fuse_qkv, --channels_last, --compile, --warmup, --encode_threads) on the CPU with the tiny
models, the full-size architecture configs, and the benchmarks' machinery (CPU smoke run, GPU loop on tiny
models)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from kserve_diffusion.api.request import DEFAULT_LIMITS, parse_request
from kserve_diffusion.config import parse_config
from kserve_diffusion.pipelines import serving_family
from kserve_diffusion.pipelines.base import Runner

from benchmarks import architectures, gpu, gpu_check, image_architectures, parallel
from tests.conftest import ROOT, ServerProcess
from tests.helpers import only_image, predict, small


def _generate(runner: Runner, **fields: object) -> np.ndarray:
    limits = DEFAULT_LIMITS
    instance = fields if fields.get("task_type") == "text2video" else small(**fields)
    request = runner.check(parse_request({"prompt": "a red fox", "num_inference_steps": 2, **instance}, limits), limits)
    output = runner.generate(request, 3)
    return np.asarray(output[0] if isinstance(output, list) else output.frames[0], dtype=np.float32)


def _runner(model: Path, *flags: str) -> Runner:
    config = parse_config(["--model_id", str(model), "--device", "cpu", *flags])
    return serving_family(config).load(config)


@pytest.fixture(scope="module")
def eager_images(tiny_models: dict[str, Path]) -> dict[str, np.ndarray]:
    """What each tiny family draws without speed options."""
    return {
        "sdxl": _generate(_runner(tiny_models["sdxl"])),
        "flux": _generate(_runner(tiny_models["flux"], "--model_type", "flux")),
    }


@pytest.mark.parametrize(
    ("family", "flags"),
    [
        ("sdxl", ("--fuse_qkv", "true")),
        ("sdxl", ("--channels_last", "true")),
        ("sdxl", ("--fuse_qkv", "true", "--channels_last", "true")),
        ("flux", ("--model_type", "flux", "--fuse_qkv", "true")),
        ("flux", ("--model_type", "flux", "--channels_last", "true")),
    ],
)
def test_speed_flags_load_and_generate_the_same_image(
    tiny_models: dict[str, Path], eager_images: dict[str, np.ndarray], family: str, flags: tuple[str, ...]
) -> None:
    runner = _runner(tiny_models[family], *flags)
    image = _generate(runner)
    assert np.abs(image - eager_images[family]).max() <= 2  # float rounding may move a pixel value by one


def test_compile_full_captures_the_whole_unet(
    tiny_models: dict[str, Path], eager_images: dict[str, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Inductor's code generation for a whole UNet takes about 90 s cold on 2 cores (the compiled server below
    # runs inductor, regionally); here dynamo must capture the whole UNet as one graph (fullgraph=True).
    compile_module = torch.nn.Module.compile

    def with_eager_backend(module: torch.nn.Module, *args: object, **kwargs: object) -> None:
        compile_module(module, *args, **{**kwargs, "backend": "eager"})

    monkeypatch.setattr(torch.nn.Module, "compile", with_eager_backend)
    runner = _runner(tiny_models["sdxl"], "--compile", "full")
    assert runner.base.unet._compiled_call_impl is not None  # type: ignore[attr-defined]
    assert np.abs(_generate(runner) - eager_images["sdxl"]).max() <= 2


def test_fuse_qkv_and_channels_last_reach_the_modules(tiny_models: dict[str, Path]) -> None:
    runner = _runner(tiny_models["sdxl"], "--fuse_qkv", "true", "--channels_last", "true")
    unet, vae = runner.base.unet, runner.base.vae  # type: ignore[attr-defined]
    assert {type(processor).__name__ for processor in unet.attn_processors.values()} == {"FusedAttnProcessor2_0"}
    assert any(getattr(module, "fused_projections", False) for module in vae.modules())
    assert unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert runner.img2img.unet is unet  # type: ignore[attr-defined]  # shared modules are changed once, for all


def test_wan_takes_fuse_qkv(tiny_models: dict[str, Path]) -> None:
    runner = _runner(tiny_models["wan"], "--model_type", "wan", "--fuse_qkv", "true")
    transformer = runner.pipeline.transformer  # type: ignore[attr-defined]
    assert any(getattr(module, "fused_projections", False) for module in transformer.modules())
    frames = _generate(runner, task_type="text2video", num_frames=5, video_height=64, video_width=64)
    assert frames.shape == (64, 64, 3)


def test_compiled_server_warms_up_before_ready(compiled_server: ServerProcess, tiny_models: dict[str, Path]) -> None:
    log = compiled_server.log()
    assert "regional torch.compile of UNet2DConditionModel" in log
    assert log.index("warm-up text2img took") < log.index("Application startup complete")
    with httpx.Client(base_url=compiled_server.url, timeout=300) as client:
        _, image, _ = only_image(predict(client, small(seed=3)))
    eager = _generate(_runner(tiny_models["sdxl"]), seed=3)
    assert np.abs(np.asarray(image, dtype=np.float32) - eager).max() <= 2


def test_architecture_configs_match_published_sizes() -> None:
    for module in (architectures, image_architectures):  # this year's image families' too
        for name, (published, tolerance) in module.PUBLISHED_PARAMETERS.items():
            count = module.parameter_count(name)
            assert abs(count - published) <= tolerance * published, (name, count)


def test_gpu_benchmark_loop_runs_on_tiny_models() -> None:
    smaller = {"height": 64, "width": 64, "num_inference_steps": 2}
    video = {"video_width": 64, "video_height": 64, "num_frames": 5, "num_inference_steps": 2}
    # + I2V, A14B, TI2V-5B (the image families' cases: test_image_families_model.py)
    chosen = [*gpu.CASES[:4], *(case for case in gpu.CASES if case.skipped_modes and case not in gpu.IMAGE_CASES)]
    cases = tuple(
        dataclasses.replace(case, fields={**case.fields, **(video if case.family.startswith("wan") else smaller)})
        for case in chosen
    )
    options = ("eager", "fuse_qkv")
    rows = gpu.measure(cases, modes=("cpu",), options=options, builders=gpu.TINY, runs=1, build_device="cpu")
    assert [(row["case"], row["option"]) for row in rows] == [
        (case.label, option) for case in cases for option in options
    ]
    assert all(isinstance(row["latency (s)"], float) and row["latency (s)"] > 0 for row in rows)


def test_bench_quick_run_writes_its_results(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "benchmarks.bench", "--quick", "--out", str(tmp_path)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "cpu.json").read_text())
    assert results["machine"]["versions"]["kserve"] and results["machine"]["cpu_cores"]
    sections = {section["title"][:2]: section["rows"] for section in results["sections"]}
    assert {row["encoding"] for row in sections["b,"]} == {"encode pool (default)", "encode on the accelerator thread"}
    assert all(row["health p99 (ms, goal <= 50)"] > 0 for row in sections["b,"])
    assert "| PNG level 1 (default) |" in (tmp_path / "cpu.md").read_text()
    assert [row["store"] for row in sections["g."]] == [row["store"] for row in sections["h."]]
    assert all(row["overhead ratio (goal <= 1.05)"] > 0 for row in sections["g."])
    assert all(row["progress events"] >= 3 and row["p95 (ms, goal <= 100)"] >= 0 for row in sections["h."])
    assert [row["requests with an adapter"][:5] for row in sections["i."]] == ["first", "switc", "the s"]
    assert all(row["ratio (median of pairs)"] > 0 for row in sections["i."])
    assert (tmp_path / "cpu.png").read_bytes().startswith(b"\x89PNG")


def test_gpu_check_matrix_runs_its_option_sets_on_tiny_models() -> None:
    """Every (case, option) of `make gpu-check` on the tiny models on the CPU (group offload needs CUDA)."""
    smaller = {"height": 64, "width": 64, "num_inference_steps": 4}
    video = {"video_width": 64, "video_height": 64, "num_frames": 5, "num_inference_steps": 4}
    rows = []
    for case, mode, option in gpu_check.MATRIX:
        if mode != "cuda":
            continue
        fields = {**case.fields, **(video if case.family.startswith("wan") else smaller)}
        rows += gpu.measure(
            (dataclasses.replace(case, fields=fields),), ("cpu",), (option,), gpu.TINY, runs=1, build_device="cpu"
        )
    assert all(isinstance(row["latency (s)"], float) for row in rows), rows
    cached = [row for row in rows if "cache" in row["option"]]
    assert len(cached) == 2 and all(row[gpu.CACHE_NOTE].endswith("%") for row in cached)


def test_bench_gpu_parallel_cases_run_on_two_cpu_ranks() -> None:
    """make bench-gpu's multi-GPU cases, on the tiny models with two gloo ranks: latency on 1 and 2 ranks."""
    flux = dataclasses.replace(parallel.FLUX, fields={"height": 64, "width": 64, "num_inference_steps": 2})
    wan = dataclasses.replace(parallel.WAN_81, fields={**parallel.WAN_81.fields, "video_width": 64})
    wan = dataclasses.replace(wan, fields={**wan.fields, "video_height": 64, "num_frames": 5, "num_inference_steps": 2})
    cases = ((flux, (2, 1000), "int8"), (wan, (2,), "eager"))
    rows = parallel.measure(cases, "TINY", device="cpu", runs=1)
    assert [(row["case"], row["GPUs"]) for row in rows] == [(flux.label, 2), (flux.label, 1000), (wan.label, 2)]
    measured = [row for row in rows if isinstance(row["latency (s)"], float)]
    assert len(measured) == 2 and all(row["speed-up"].endswith("x") for row in measured)
    assert rows[1]["latency (s)"] == "unmeasured: needs 1000 GPUs"
