"""This year's image families loaded in this process from tiny folders: the variants the server tests leave out
(Qwen-Image-Edit with one picture, FLUX.2 [dev], [klein] base, Z-Image base), the speed options on the new
transformers, the full-size configs, and (with a GPU) every device mode."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from kserve_diffusion.api.inputs import NO_INPUTS, InputImages
from kserve_diffusion.api.request import DEFAULT_LIMITS, parse_request
from kserve_diffusion.config import defaults
from kserve_diffusion.pipelines import resolve_model_type, serving_family
from kserve_diffusion.pipelines.image_runner import ImageRunner
from kserve_diffusion.testing import tiny
from PIL import Image

from benchmarks import gpu

LIMITS = DEFAULT_LIMITS
PICTURE = Image.new("RGB", (100, 70), (200, 40, 40))
OTHER = Image.new("RGB", (64, 80), (40, 40, 200))
MASK = Image.new("L", (96, 64), 255)
# Folder names as published: Z-Image base and Turbo differ only by name.
FOLDERS = {
    "qwen_image_edit": "Qwen-Image-Edit",
    "flux2": "FLUX.2-dev",
    "flux2_klein_base": "FLUX.2-klein-base-4B",
    "z_image": "Z-Image",
    "flux_kontext": "FLUX.1-Kontext-dev",
    "qwen_image": "Qwen-Image",
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("families")
    return {family: tiny.write(family, root / name) for family, name in FOLDERS.items()}


def load(folders: dict[str, Path], family: str, **settings: object) -> ImageRunner:
    config = resolve_model_type(defaults(model_id=str(folders[family]), **settings))
    runner = serving_family(config).load(config)
    assert isinstance(runner, ImageRunner)
    return runner


def generate(runner: ImageRunner, inputs: InputImages = NO_INPUTS, control: object = None, **fields: object) -> list:
    request = runner.check(parse_request({"prompt": "a red fox", "num_inference_steps": 2, **fields}, LIMITS), LIMITS)
    if request.task_type == "edit":
        request = request.model_copy(update={"width": request.width or 96, "height": request.height or 64})
    return runner.generate(request, 3, inputs, control)  # type: ignore[arg-type]


def test_qwen_image_edit_edits_one_picture(folders: dict[str, Path]) -> None:
    runner = load(folders, "qwen_image_edit")
    assert (runner.variant_name, runner.tasks) == ("edit", ("edit",))
    [image] = generate(runner, InputImages(PICTURE, pictures=(PICTURE,)), image="x", width=96, height=64)
    assert image.size == (96, 64)


def test_flux2_dev_draws_and_edits_from_two_pictures(folders: dict[str, Path]) -> None:
    runner = load(folders, "flux2")
    assert (runner.variant_name, runner.tasks) == ("dev", ("text2img", "edit"))
    [drawn] = generate(runner, width=64, height=64)
    pictures = InputImages(PICTURE, pictures=(PICTURE, OTHER))
    [edited] = generate(runner, pictures, images=["x", "y"], width=96, height=64)
    assert drawn.size == (64, 64) and edited.size == (96, 64)
    [again] = generate(runner, pictures, images=["x", "y"], width=96, height=64)
    assert np.array_equal(np.asarray(edited), np.asarray(again))  # same seed, same pixels


def test_flux2_klein_base_guides_with_cfg(folders: dict[str, Path]) -> None:
    runner = load(folders, "flux2_klein_base")
    assert runner.variant_name == "klein_base"
    calls = []
    hook = runner.pipelines["text2img"].transformer.register_forward_hook(lambda *args: calls.append(1))
    generate(runner, width=64, height=64)  # guidance 4.0: conditional and unconditional calls
    hook.remove()
    assert len(calls) == 4
    generate(runner, InputImages(PICTURE, MASK.resize(PICTURE.size)), image="x", mask="y", width=96, height=64)


def test_z_image_base_by_name_turbo_by_flag(folders: dict[str, Path]) -> None:
    base = load(folders, "z_image")
    assert base.variant_name == "base"
    assert base.check(parse_request({"prompt": "x"}, LIMITS), LIMITS).num_inference_steps == 50
    turbo = load(folders, "z_image", model_variant="turbo")
    assert turbo.check(parse_request({"prompt": "x"}, LIMITS), LIMITS).num_inference_steps == 9


class Tally:
    """Stands in for the request control: every step runs, what the cache skipped is kept."""

    skipped: tuple[int, int] | None = None

    def on_step(self, pipeline: object, step: int, timestep: object, callback_kwargs: dict) -> dict:
        return callback_kwargs

    def cache_skipped(self, skipped: int, total: int) -> None:
        self.skipped = (skipped, total)


@pytest.mark.parametrize(
    ("family", "cache", "fields"),
    [
        ("qwen_image", "taylorseer", {}),
        ("flux2", "mag", {}),
        ("flux_kontext", "first_block", {"image": "x"}),
    ],
)
def test_caches_run_on_the_new_transformers(folders: dict[str, Path], family: str, cache: str, fields: dict) -> None:
    ratios = "1.0,0.99,0.98,0.97,0.96,0.95" if cache == "mag" else None
    runner = load(folders, family, cache=cache, cache_mag_ratios=ratios)
    tally = Tally()
    inputs = InputImages(PICTURE, pictures=(PICTURE,)) if fields else NO_INPUTS
    generate(runner, inputs, tally, num_inference_steps=4, width=64, height=64, **fields)
    assert tally.skipped is not None and tally.skipped[1] > 0


def test_attention_backend_on_a_new_transformer(folders: dict[str, Path]) -> None:
    runner = load(folders, "qwen_image", attention_backend="native")
    assert generate(runner, width=64, height=64)[0].size == (64, 64)


def test_gpu_benchmark_loop_runs_the_new_families_on_tiny_models() -> None:
    small = {"height": 64, "width": 64, "num_inference_steps": 2}
    cases = tuple(dataclasses.replace(case, fields={**case.fields, **small}) for case in gpu.IMAGE_CASES)
    rows = gpu.measure(cases, modes=("cpu",), options=("eager",), builders=gpu.TINY, runs=1, build_device="cpu")
    assert [row["case"] for row in rows] == [case.label for case in cases]
    assert all(isinstance(row["latency (s)"], float) for row in rows), rows


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("mode", ["cuda", "enable_model_cpu_offload", "enable_sequential_cpu_offload", "group_offload"])
@pytest.mark.parametrize("family", ["qwen_image", "flux2", "z_image", "flux_kontext", "qwen_image_edit"])
def test_gpu_device_modes_generate(folders: dict[str, Path], family: str, mode: str) -> None:
    runner = load(folders, family, device=mode, dtype="bfloat16")
    fields = {"width": 64, "height": 64}
    inputs = NO_INPUTS
    if runner.default_task == "edit":
        fields["image"] = "x"  # type: ignore[assignment]
        inputs = InputImages(PICTURE, pictures=(PICTURE,))
    assert generate(runner, inputs, **fields)[0].size == (64, 64)


def test_fuse_qkv_on_z_image_is_a_startup_error(folders: dict[str, Path]) -> None:
    from kserve_diffusion.errors import ConfigError

    with pytest.raises(ConfigError, match="--fuse_qkv: ZImageTransformer2DModel has no fusable attention projections"):
        load(folders, "z_image", fuse_qkv=True)
