"""In-process loading: weights exist once, the refiner shares them, device modes map to diffusers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from kserve_diffusion.api.inputs import InputImages
from kserve_diffusion.api.request import DEFAULT_LIMITS, parse_request
from kserve_diffusion.config import defaults
from kserve_diffusion.errors import ConfigError
from kserve_diffusion.pipelines import devices, get_family, sdxl
from kserve_diffusion.testing import ldm_export, tiny
from PIL import Image
from safetensors.torch import load_file


def test_refiner_shares_text_encoder_2_and_vae(tiny_models: dict[str, Path]) -> None:
    config = defaults(model_id=str(tiny_models["sdxl"]), use_refiner=True, refiner_id=str(tiny_models["refiner"]))
    runner = sdxl.load(config)
    assert runner.refiner is not None
    assert runner.refiner.text_encoder_2 is runner.base.text_encoder_2
    assert runner.refiner.vae is runner.base.vae
    assert runner.refiner.unet is not runner.base.unet


def test_image_pipelines_are_made_of_the_base_modules(tiny_models: dict[str, Path]) -> None:
    """img2img and inpaint hold the base's very module objects: no second copy, no dtype cast."""
    runner = sdxl.load(defaults(model_id=str(tiny_models["sdxl"]), dtype="float16"))
    for pipeline in (runner.img2img, runner.inpaint):
        for name, module in runner.base.components.items():
            assert pipeline.components[name] is module, name
    assert runner.img2img.unet.dtype == runner.inpaint.vae.dtype == torch.float16


@pytest.mark.parametrize("layout", ["folder", "single_file"])
def test_dedicated_inpaint_model_brings_only_its_unet(tiny_models: dict[str, Path], layout: str) -> None:
    if layout == "folder":
        config = defaults(model_id=str(tiny_models["sdxl"]), inpaint_model_id=str(tiny_models["inpaint"]))
    else:
        checkpoint = tiny_models["inpaint_file"]
        config = defaults(
            model_id=str(tiny_models["sdxl"]),
            inpaint_model_id=str(checkpoint),
            inpaint_single_file_config=str(checkpoint.parent / "config"),
        )
    runner = sdxl.load(config)
    assert runner.inpaint.unet is not runner.base.unet and runner.inpaint.unet.config.in_channels == 9
    for name in sdxl.INPAINT_SHARED:
        assert getattr(runner.inpaint, name) is getattr(runner.base, name), name
    expected = tiny.build_sdxl_inpaint().unet.state_dict()
    loaded = runner.inpaint.unet.state_dict()
    assert expected.keys() == loaded.keys() and all(torch.equal(expected[k], loaded[k]) for k in expected)


def test_inpaint_flags_are_checked(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    base = str(tiny_models["sdxl"])
    with pytest.raises(ConfigError, match="--inpaint_single_file_config: needs --inpaint_model_id"):
        sdxl.load(defaults(model_id=base, inpaint_single_file_config=str(tmp_path)))
    with pytest.raises(
        ConfigError, match="--inpaint_single_file_config: only used when --inpaint_model_id is a single"
    ):
        sdxl.load(
            defaults(model_id=base, inpaint_model_id=str(tiny_models["inpaint"]), inpaint_single_file_config=base)
        )
    with pytest.raises(ConfigError, match="--inpaint_model_id: .* is not a diffusers model folder"):
        sdxl.load(defaults(model_id=base, inpaint_model_id=str(tmp_path)))


def test_requests_do_not_mutate_the_shared_scheduler(tiny_models: dict[str, Path]) -> None:
    runner = sdxl.load(defaults(model_id=str(tiny_models["sdxl"])))
    shared = runner.base.scheduler
    request = parse_request(
        {"prompt": "x", "height": 64, "width": 64, "num_inference_steps": 2, "scheduler": "KLMS"}, DEFAULT_LIMITS
    )
    images = runner.generate(runner.check(request, DEFAULT_LIMITS), seed=1)
    assert len(images) == 1
    assert runner.base.scheduler is shared
    assert type(shared).__name__ == "EulerDiscreteScheduler"


def test_single_file_checkpoint_has_original_layout_and_round_trips(tiny_models: dict[str, Path]) -> None:
    checkpoint = load_file(tiny_models["sdxl_file"])
    # the keys diffusers uses to recognise an SDXL base checkpoint
    assert "conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias" in checkpoint
    assert "model.diffusion_model.input_blocks.0.0.weight" in checkpoint
    assert "first_stage_model.decoder.conv_out.weight" in checkpoint
    from_file = sdxl.load(
        defaults(
            single_file_model=str(tiny_models["sdxl_file"]),
            single_file_config=str(tiny_models["sdxl_file"].parent / "config"),
        )
    )
    reference = tiny.build_sdxl_base()
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        expected, loaded = getattr(reference, name).state_dict(), getattr(from_file.base, name).state_dict()
        assert expected.keys() == loaded.keys(), name
        assert all(torch.equal(expected[key], loaded[key]) for key in expected), name


def test_refiner_checkpoint_uses_embedder_0_for_open_clip(tiny_models: dict[str, Path]) -> None:
    keys = load_file(tiny_models["refiner_file"]).keys()
    assert "conditioner.embedders.0.model.transformer.resblocks.9.mlp.c_proj.bias" in keys
    assert not any(key.startswith("conditioner.embedders.1") for key in keys)


def test_unet_export_inverts_diffusers_conversion() -> None:
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    unet = tiny.build_sdxl_base().unet
    ldm = ldm_export.unet_to_ldm(unet.state_dict(), unet.config.layers_per_block)
    back = convert_ldm_unet_checkpoint(ldm, dict(unet.config))
    assert back.keys() == unet.state_dict().keys()


def test_tiny_refiner_matches_tiny_base_components() -> None:
    base, refiner = tiny.build_sdxl_base(), tiny.build_sdxl_refiner()
    for name in ("vae", "text_encoder_2"):
        a, b = getattr(base, name).state_dict(), getattr(refiner, name).state_dict()
        assert all(torch.equal(a[key], b[key]) for key in a)


def test_vae_downsamples_by_8() -> None:
    vae = tiny.build_sdxl_base().vae
    assert 2 ** (len(vae.config.block_out_channels) - 1) == 8


def test_startup_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a diffusers model folder"):
        sdxl.load(defaults(model_id=str(tmp_path)))
    with pytest.raises(ConfigError, match="no such file"):
        sdxl.load(defaults(single_file_model=str(tmp_path / "missing.safetensors")))
    assert get_family("flux").name == "flux"
    with pytest.raises(ConfigError, match="--model_type: expected one of sdxl, flux, wan"):
        get_family("sd3")


def test_single_file_without_config_offline_says_which_flag(tiny_models: dict[str, Path], monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match="--single_file_config"):
        sdxl.load(defaults(single_file_model=str(tiny_models["sdxl_file"])))


def test_cuda_modes_need_cuda() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    for mode in ("cuda", "enable_model_cpu_offload", "enable_sequential_cpu_offload"):
        with pytest.raises(ConfigError, match="needs a CUDA GPU"):
            devices.check_device(mode)


def test_every_device_mode_calls_its_diffusers_method() -> None:
    class Recorder:
        def __init__(self) -> None:
            self.calls: list[tuple] = []

        def to(self, device: str) -> None:
            self.calls.append(("to", device))

        def enable_model_cpu_offload(self) -> None:
            self.calls.append(("enable_model_cpu_offload",))

        def enable_sequential_cpu_offload(self) -> None:
            self.calls.append(("enable_sequential_cpu_offload",))

    expected = {
        "cuda": ("to", "cuda"),
        "cpu": ("to", "cpu"),
        "enable_model_cpu_offload": ("enable_model_cpu_offload",),
        "enable_sequential_cpu_offload": ("enable_sequential_cpu_offload",),
    }
    for mode, call in expected.items():
        pipeline = Recorder()
        devices.place(pipeline, mode)  # type: ignore[arg-type]
        assert pipeline.calls == [call]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("mode", ["cuda", "enable_model_cpu_offload", "enable_sequential_cpu_offload"])
def test_gpu_device_modes_generate(tiny_models: dict[str, Path], mode: str) -> None:
    config = defaults(
        model_id=str(tiny_models["sdxl"]),
        refiner_id=str(tiny_models["refiner"]),
        use_refiner=True,
        device=mode,
        dtype="float16",
    )
    runner = sdxl.load(config)
    request = parse_request(
        {"prompt": "x", "height": 64, "width": 64, "num_inference_steps": 4, "high_noise_frac": 0.5}, DEFAULT_LIMITS
    )
    images = runner.generate(runner.check(request, DEFAULT_LIMITS), seed=1)
    assert images[0].size == (64, 64)
    # image-to-image (through the refiner) and inpainting share those hooked modules
    picture, mask = Image.new("RGB", (64, 64), "red"), Image.new("L", (64, 64), 255)
    for fields, inputs in (
        ({"image": "x"}, InputImages(picture)),
        ({"image": "x", "mask": "y"}, InputImages(picture, mask)),
    ):
        request = parse_request(
            {"prompt": "x", "height": 64, "width": 64, "num_inference_steps": 4, **fields}, DEFAULT_LIMITS
        )
        assert runner.generate(runner.check(request, DEFAULT_LIMITS), 1, inputs)[0].size == (64, 64)
