"""LoRA adapters in a runner loaded in this process: the refiner runs without them, a dedicated inpainting
UNet refuses them, the least recently used adapter is unloaded, preloading."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from kserve_diffusion.api.loras import LoraChoice
from kserve_diffusion.api.request import DEFAULT_LIMITS, parse_request
from kserve_diffusion.config import defaults
from kserve_diffusion.errors import ConfigError, RequestError
from kserve_diffusion.pipelines import flux, lora, sdxl
from kserve_diffusion.testing import tiny
from kserve_diffusion.testing.adapters import write_adapters
from peft.tuners.tuners_utils import BaseTunerLayer


@pytest.fixture(scope="module")
def sdxl_loras(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny SDXL adapters alone (a FLUX server finds none of its family here)."""
    folder = tmp_path_factory.mktemp("loras")
    write_adapters(tiny.BUILDERS["sdxl"](), "sdxl", folder)
    return folder


def request(**fields: object):
    fields = {"prompt": "a fox", "height": 64, "width": 64, "num_inference_steps": 2, "seed": 1, **fields}
    return parse_request(fields, DEFAULT_LIMITS)


def lora_layers_on(module) -> list[bool]:
    return [not layer.disable_adapters for layer in module.modules() if isinstance(layer, BaseTunerLayer)]


def test_the_refiner_runs_without_the_adapters(tiny_models: dict[str, Path], sdxl_loras: Path) -> None:
    config = defaults(
        model_id=str(tiny_models["sdxl"]),
        refiner_id=str(tiny_models["refiner"]),
        use_refiner=True,
        lora_dir=str(sdxl_loras),
    )
    runner = sdxl.load(config)
    shared = runner.base.text_encoder_2
    assert shared is runner.refiner.text_encoder_2
    seen = []
    refiner_call = type(runner.refiner).__call__

    def spy(pipeline, *args, **kwargs):
        seen.append(any(lora_layers_on(pipeline.text_encoder_2)))
        return refiner_call(pipeline, *args, **kwargs)

    checked = runner.check(request(loras=[{"name": "sdxl-style"}]), DEFAULT_LIMITS)
    runner.use_loras(checked)
    assert all(lora_layers_on(shared)) and lora_layers_on(runner.base.unet)
    original = type(runner.refiner).__call__
    try:
        type(runner.refiner).__call__ = spy
        runner.generate(checked, 1)
    finally:
        type(runner.refiner).__call__ = original
    assert seen == [False]  # text_encoder_2's LoRA layers were off while the refiner ran
    assert all(lora_layers_on(shared))  # and on again for the base afterwards
    assert not any(isinstance(m, BaseTunerLayer) for m in runner.refiner.unet.modules())


def test_a_dedicated_inpainting_unet_refuses_adapters(tiny_models: dict[str, Path], sdxl_loras: Path) -> None:
    model = {"model_id": str(tiny_models["sdxl"]), "inpaint_model_id": str(tiny_models["inpaint"])}
    runner = sdxl.load(defaults(**model, lora_dir=str(sdxl_loras)))
    inpaint = request(task_type="inpaint", image="aGk=", mask="aGk=", loras=[{"name": "sdxl-style"}])
    with pytest.raises(RequestError, match="dedicated inpainting model"):
        runner.check(inpaint, DEFAULT_LIMITS)


def test_least_recently_used_is_unloaded_and_preload(tiny_models: dict[str, Path], sdxl_loras: Path) -> None:
    config = defaults(
        model_id=str(tiny_models["sdxl"]), lora_dir=str(sdxl_loras), max_loaded_loras=2, preload_loras="sdxl-kohya"
    )
    runner = sdxl.load(config)
    adapters = runner.adapters
    assert list(adapters.loaded) == ["sdxl-kohya"]
    for name in ("sdxl-style", "sdxl-kohya", "sdxl-detail"):
        runner.use_loras(runner.check(request(loras=[{"name": name}]), DEFAULT_LIMITS))
    assert list(adapters.loaded) == ["sdxl-kohya", "sdxl-detail"]  # sdxl-style was the least recently used
    peft_names = set(runner.base.unet.peft_config)
    assert peft_names == set(adapters.loaded.values())  # its layers are gone from the modules too
    done = runner.use_loras(runner.check(request(loras=[{"name": "sdxl-style"}]), DEFAULT_LIMITS))
    assert done.loaded == ["sdxl-style"] and list(adapters.loaded) == ["sdxl-detail", "sdxl-style"]


def test_compile_without_an_adapter_of_the_family_refuses_adapters(
    tiny_models: dict[str, Path], sdxl_loras: Path
) -> None:
    """--compile sizes its hot-swap slots from the folder's adapters; with only SDXL ones, a FLUX server starts
    and answers requests naming adapters with a 400 that says why (compiling happens on first use: not here)."""
    config = defaults(
        model_type="flux", model_id=str(tiny_models["flux"]), lora_dir=str(sdxl_loras), compile="regional"
    )
    runner = flux.load(config)
    with pytest.raises(RequestError, match="no FLUX adapter was in --lora_dir at start-up"):
        runner.check(request(guidance_scale=3.5, loras=[{"name": "sdxl-style"}]), DEFAULT_LIMITS)
    assert runner.check(request(guidance_scale=3.5), DEFAULT_LIMITS).loras is None


def test_hot_swap_slots_give_what_named_adapters_give(sdxl_loras: Path) -> None:
    """--compile's slots (prepared here without compiling) apply every adapter of a request with its scale:
    the same images as eager named adapters, up to float rounding (slots are padded to --max_lora_rank)."""
    import numpy as np
    import torch

    def images(pipeline, adapters, choices) -> np.ndarray:
        adapters.activate([LoraChoice(name=name, scale=scale) for name, scale in choices])
        generator = torch.Generator().manual_seed(3)
        kwargs = {"prompt": "a fox", "height": 64, "width": 64, "num_inference_steps": 2, "output_type": "np"}
        return pipeline(**kwargs, generator=generator).images

    eager_pipeline, slot_pipeline = tiny.BUILDERS["sdxl"](), tiny.BUILDERS["sdxl"]()
    for pipeline in (eager_pipeline, slot_pipeline):
        pipeline.set_progress_bar_config(disable=True)
    eager = lora.open_adapters(eager_pipeline, "sdxl", defaults(lora_dir=str(sdxl_loras)))
    slots = lora.open_adapters(slot_pipeline, "sdxl", defaults(lora_dir=str(sdxl_loras), compile="regional"))
    assert slots.slots is not None and eager.slots is None
    plain = images(eager_pipeline, eager, [])
    assert np.array_equal(images(slot_pipeline, slots, []), plain)
    for choices in ([("sdxl-style", 1.0)], [("sdxl-detail", 0.7), ("sdxl-kohya", 1.0)], [("sdxl-style", 0.0)]):
        expected = images(eager_pipeline, eager, choices)
        np.testing.assert_allclose(images(slot_pipeline, slots, choices), expected, atol=2e-3)
    assert np.array_equal(images(slot_pipeline, slots, []), plain)


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"lora_dir": "/nonexistent/loras"}, "--lora_dir: /nonexistent/loras is not a folder"),
        ({"fuse_qkv": True}, "--fuse_qkv with --lora_dir"),
        ({"lora_dir": None, "preload_loras": "sdxl-style"}, "--preload_loras: needs --lora_dir"),
        ({"preload_loras": "../x"}, "--preload_loras: '../x' is not an adapter name"),
        ({"preload_loras": "nope"}, "--preload_loras: no adapter named"),
        ({"preload_loras": "a,b,c", "max_loaded_loras": 2}, "3 adapters, more than --max_loaded_loras 2"),
    ],
)
def test_startup_errors_name_the_flag(sdxl_loras: Path, options: dict, words: str) -> None:
    """Checked before the pipeline is touched (the operator's mistakes, found at start-up)."""
    config = defaults(**{"lora_dir": str(sdxl_loras), **options})
    with pytest.raises(ConfigError, match=re.escape(words)):
        lora.open_adapters(None, "sdxl", config)  # type: ignore[arg-type]


def test_a_preloaded_adapter_that_cannot_load_stops_the_start(tiny_models: dict[str, Path], lora_dir: Path) -> None:
    """`lora_dir`: the session's adapters, with one for another SDXL architecture."""
    config = defaults(
        model_id=str(tiny_models["sdxl"]), lora_dir=str(lora_dir), preload_loras="sdxl-style,other-architecture"
    )
    with pytest.raises(ConfigError, match="--preload_loras: adapter 'other-architecture' cannot be loaded into"):
        sdxl.load(config)
