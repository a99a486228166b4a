"""FLUX: loading (folder, single file, variants), request rules, and every protocol against a real server."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from kserve.protocol.infer_type import InferInput, InferRequest
from kserve_diffusion.api.inputs import NO_INPUTS, InputImages
from kserve_diffusion.api.request import DEFAULT_LIMITS, parse_request
from kserve_diffusion.config import defaults
from kserve_diffusion.errors import ConfigError, RequestError
from kserve_diffusion.pipelines import flux, serving_family
from kserve_diffusion.pipelines.schedulers import FLUX_SCHEDULERS
from kserve_diffusion.testing import ldm_export, tiny
from PIL import Image
from safetensors.torch import save_file

from tests.conftest import ServerProcess
from tests.helpers import as_data_url, grpc_infer, only_image, open_image, predict
from tests.image_host import gradient, mask, png

LIMITS = DEFAULT_LIMITS
IMAGE = png(gradient(100, 70))  # served as 96x64: rounded down to a multiple of 16
MASK = png(mask(25, 18))


def cheap(**fields: object) -> dict:
    """A cheap FLUX instance: 64x64, 2 steps, fixed seed."""
    return {"prompt": "a red fox", "height": 64, "width": 64, "num_inference_steps": 2, "seed": 5, **fields}


@pytest.fixture(scope="module")
def fluxc(flux_server: ServerProcess) -> Iterator[httpx.Client]:
    """An httpx client for the FLUX server."""
    with httpx.Client(base_url=flux_server.url, timeout=120) as http:
        yield http


def flux_predict(http: httpx.Client, instance: dict) -> httpx.Response:
    """A v1 predict for the FLUX server's model."""
    return predict(http, instance, model="flux")


def image_bytes(http: httpx.Client, **fields: object) -> bytes:
    """The PNG of one cheap FLUX request."""
    return only_image(flux_predict(http, cheap(**fields)))[2]


def runner(tiny_models: dict[str, Path], model: str = "flux", **options: object) -> flux.FluxRunner:
    """A FLUX runner loaded in this process (CPU, float32)."""
    return flux.load(defaults(model_type="flux", model_id=str(tiny_models[model]), **options))


def pixels(run: flux.FluxRunner, **fields: object) -> np.ndarray:
    """The first image of one in-process generation, as an array."""
    request = run.check(parse_request(cheap(**fields), LIMITS), LIMITS)
    return np.asarray(run.generate(request, seed=5)[0])


# --- loading ---


def test_single_file_transformer_gives_the_folders_images(tiny_models: dict[str, Path]) -> None:
    checkpoint = tiny_models["flux_file"]
    from_file = flux.load(
        defaults(model_type="flux", model_id=str(checkpoint.parent / "components"), single_file_model=str(checkpoint))
    )
    assert not list((checkpoint.parent / "components" / "transformer").glob("*.safetensors"))
    assert np.array_equal(pixels(from_file), pixels(runner(tiny_models)))


def test_original_layout_checkpoint_loads_bit_exactly(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    """A checkpoint in Black Forest Labs' layout (flux1-dev.safetensors) at the real width, one block of each
    kind: diffusers' converter assumes the 3072-wide model, so the tiny width cannot exercise it."""
    with torch.device("meta"):
        transformer = tiny.flux_transformer(guidance=True, heads=24, head_dim=128)
    transformer = transformer.to_empty(device="cpu").to(torch.bfloat16)
    generator = torch.Generator().manual_seed(0)
    for parameter in transformer.parameters():
        parameter.data.normal_(0, 0.02, generator=generator)
    pipeline = tiny.build_flux()
    pipeline.transformer = transformer
    components = tmp_path / "components"
    pipeline.save_pretrained(components, safe_serialization=True)
    for weights in (components / "transformer").glob("*.safetensors*"):
        weights.unlink()
    original = ldm_export.flux_transformer_to_original(transformer.state_dict())
    assert "double_blocks.0.img_attn.qkv.weight" in original and "guidance_in.in_layer.weight" in original
    save_file({key: value.contiguous() for key, value in original.items()}, str(tmp_path / "flux1.safetensors"))
    del original, pipeline
    loaded = flux.load(
        defaults(
            model_type="flux",
            model_id=str(components),
            single_file_model=str(tmp_path / "flux1.safetensors"),
            dtype="bfloat16",
        )
    )
    expected, got = transformer.state_dict(), loaded.pipelines["text2img"].transformer.state_dict()
    assert got.keys() == expected.keys()
    assert all(torch.equal(expected[key], got[key]) for key in expected)


def test_image_to_image_and_inpainting_share_the_loaded_modules(tiny_models: dict[str, Path]) -> None:
    run = runner(tiny_models)
    base = run.pipelines["text2img"]
    for task in ("img2img", "inpaint"):
        for name, module in base.components.items():
            assert run.pipelines[task].components[name] is module, (task, name)


def test_variant_is_detected_from_the_transformer(tiny_models: dict[str, Path]) -> None:
    dev, schnell = runner(tiny_models), runner(tiny_models, "flux_schnell")
    assert (dev.variant_name, schnell.variant_name) == ("dev", "schnell")
    request = dev.check(parse_request({"prompt": "a fox"}, LIMITS), LIMITS)
    assert (request.num_inference_steps, request.guidance_scale, request.max_sequence_length) == (28, 3.5, 512)
    request = schnell.check(parse_request({"prompt": "a fox"}, LIMITS), LIMITS)
    assert (request.num_inference_steps, request.guidance_scale, request.max_sequence_length) == (4, 0.0, 256)
    assert request.scheduler == "FlowMatchEuler" and (request.width, request.height) == (1024, 1024)
    forced = runner(tiny_models, "flux_schnell", flux_variant="dev")
    assert forced.check(parse_request({"prompt": "a fox"}, LIMITS), LIMITS).num_inference_steps == 28


def test_flux_with_wan_beside_it_routes_by_task(tiny_models: dict[str, Path]) -> None:
    config = defaults(model_type="flux", model_id=str(tiny_models["flux"]), video_model_id=str(tiny_models["wan"]))
    both = serving_family(config).load(config)
    image = both.check(parse_request({"prompt": "a fox"}, LIMITS), LIMITS)
    assert (image.task_type, image.num_inference_steps, image.scheduler) == ("text2img", 28, "FlowMatchEuler")
    video = both.check(parse_request({"prompt": "a fox", "task_type": "text2video"}, LIMITS), LIMITS)
    assert (video.num_inference_steps, video.scheduler) == (25, "UniPC")
    assert both.size_multiples == {"text2img": 16, "img2img": 16, "inpaint": 16, "text2video": 16}


def test_schnell_refuses_a_guidance_it_would_ignore(tiny_models: dict[str, Path]) -> None:
    schnell = runner(tiny_models, "flux_schnell")
    with pytest.raises(RequestError, match="guidance_scale: FLUX.1-schnell has no guidance input.*got 3.5"):
        schnell.check(parse_request(cheap(guidance_scale=3.5), LIMITS), LIMITS)
    assert pixels(schnell, guidance_scale=0).shape == (64, 64, 3)


def test_default_steps_are_lowered_to_the_server_limit(tiny_models: dict[str, Path]) -> None:
    limits = replace(DEFAULT_LIMITS, max_steps=20)
    request = runner(tiny_models).check(parse_request({"prompt": "a fox"}, limits), limits)
    assert request.num_inference_steps == 20
    with pytest.raises(RequestError, match="num_inference_steps: must be between 1 and 20, got 28"):
        parse_request({"prompt": "a fox", "num_inference_steps": 28}, limits)


@pytest.mark.parametrize("name", list(FLUX_SCHEDULERS))
def test_every_flux_scheduler_generates_reproducibly(tiny_models: dict[str, Path], name: str) -> None:
    run = runner(tiny_models)
    first, again = pixels(run, scheduler=name), pixels(run, scheduler=name)
    assert first.shape == (64, 64, 3) and np.array_equal(first, again)


@pytest.mark.parametrize(
    ("option", "words"),
    [
        ({"use_refiner": True, "refiner_id": "/x"}, "--refiner_id: applies to SDXL only"),
        ({"inpaint_model_id": "/x"}, "--inpaint_model_id: applies to SDXL only"),
        ({"single_file_config": "/x"}, "--single_file_config: applies to SDXL only"),
    ],
)
def test_sdxl_only_options_are_startup_errors(tiny_models: dict[str, Path], option: dict, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        runner(tiny_models, **option)


def test_single_file_needs_the_transformer_config(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    checkpoint = tiny_models["flux_file"]
    with pytest.raises(ConfigError, match="has no transformer/config.json"):
        flux.load(defaults(model_type="flux", model_id=str(tmp_path), single_file_model=str(checkpoint)))
    with pytest.raises(ConfigError, match="--single_file_model: no such file"):
        flux.load(defaults(model_type="flux", model_id=str(tmp_path), single_file_model=str(tmp_path / "x")))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("mode", ["cuda", "enable_model_cpu_offload", "enable_sequential_cpu_offload"])
def test_gpu_device_modes_generate(tiny_models: dict[str, Path], mode: str) -> None:
    run = runner(tiny_models, device=mode, dtype="bfloat16")
    picture, mask_image = Image.new("RGB", (64, 64), "red"), Image.new("L", (64, 64), 255)
    for fields, inputs in (
        ({}, NO_INPUTS),
        ({"image": "x"}, InputImages(picture)),
        ({"image": "x", "mask": "y"}, InputImages(picture, mask_image)),
    ):
        request = run.check(parse_request(cheap(**fields), LIMITS), LIMITS)
        assert run.generate(request, 1, inputs)[0].size == (64, 64)


# --- the server: v1 ---


def test_text_to_image_sizes_seed_and_default_steps(fluxc: httpx.Client, flux_server: ServerProcess) -> None:
    prediction, image, _ = only_image(flux_predict(fluxc, cheap(width=128, height=80)))
    assert prediction == {"task_type": "text2img", "seed": 5, "images": prediction["images"]}
    assert image.size == (128, 80)
    only_image(flux_predict(fluxc, {"prompt": "defaults", "height": 64, "width": 64}))
    assert "serving FLUX.1-dev: its transformer has guidance embeddings" in flux_server.log()
    assert "size=64x64 steps=28 images=1 scheduler=FlowMatchEuler" in flux_server.log()


def test_seeds_are_reproducible_and_num_images_batches(fluxc: httpx.Client) -> None:
    first, again, other = image_bytes(fluxc), image_bytes(fluxc), image_bytes(fluxc, seed=6)
    assert first == again and first != other
    answer = flux_predict(fluxc, cheap(num_images=2)).json()
    assert len(answer["predictions"][0]["images"]) == 2


@pytest.mark.parametrize(
    "change",
    [
        {"guidance_scale": 1.0},
        {"max_sequence_length": 64},
        {"prompt_2": "a blue whale"},
        {"scheduler": "FlowMatchEulerKarras"},
        {"negative_prompt": "blurry", "true_cfg_scale": 4.0},
    ],
    ids=lambda change: next(iter(change)),
)
def test_flux_parameters_reach_the_pipeline(fluxc: httpx.Client, change: dict) -> None:
    # four steps: at two, every sigma spacing has the same two sigmas
    assert image_bytes(fluxc, num_inference_steps=4, **change) != image_bytes(fluxc, num_inference_steps=4)


def test_img2img_and_inpaint(fluxc: httpx.Client) -> None:
    edit = {"prompt": "a red fox", "num_inference_steps": 2, "seed": 5, "image": as_data_url(IMAGE)}
    prediction, image, first = only_image(flux_predict(fluxc, edit))
    assert prediction["task_type"] == "img2img" and image.size == (96, 64)
    assert only_image(flux_predict(fluxc, {**edit, "strength": 0.9}))[2] != first
    only_image(flux_predict(fluxc, {**edit, "strength": 0.01}))  # FLUX always runs at least one step
    wider = only_image(flux_predict(fluxc, {**edit, "width": 128}))[1]
    assert wider.width == 128 and wider.height % 16 == 0
    inpaint = {**edit, "mask": base64.b64encode(MASK).decode()}
    prediction, image, _ = only_image(flux_predict(fluxc, inpaint))
    assert prediction["task_type"] == "inpaint" and image.size == (96, 64)


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"width": 100}, "width: must be a multiple of 16 (e.g. 96 or 112), got 100"),
        ({"scheduler": "DDIM"}, "(DDIM is a scheduler of SDXL; it does not apply to FLUX), got 'DDIM'"),
        ({"scheduler": "Euler"}, "scheduler: must be one of FlowMatchEuler, FlowMatchEulerKarras"),
        ({"high_noise_frac": 0.8}, "high_noise_frac: applies to SDXL only, not FLUX, got 0.8"),
        ({"use_refiner": True}, "use_refiner: applies to SDXL only, not FLUX, got true"),
        ({"refiner_inference_steps": 10}, "refiner_inference_steps: applies to SDXL only, not FLUX, got 10"),
        ({"negative_prompt": "blurry"}, "each step then runs the transformer twice), got no true_cfg_scale"),
        ({"negative_prompt": "x", "true_cfg_scale": 1.0}, "also send true_cfg_scale > 1"),
        ({"true_cfg_scale": 4.0}, "true_cfg_scale: needs a negative_prompt"),
        ({"true_cfg_scale": 0.5}, "true_cfg_scale: must be >= 1 and <= 50, got 0.5"),
        ({"max_sequence_length": 600}, "max_sequence_length: must be >= 1 and <= 512, got 600"),
        ({"strength": 0.5}, "strength: applies to img2img and inpaint only, got 0.5"),
        ({"num_frames": 9}, "num_frames: applies to text2video and img2video only"),
        ({"task_type": "text2video"}, "task_type: this server serves text2img, img2img, inpaint, got 'text2video'"),
    ],
)
def test_bad_flux_requests_name_the_field(fluxc: httpx.Client, fields: dict, words: str) -> None:
    response = flux_predict(fluxc, cheap(**fields))
    assert response.status_code == 400, response.text
    assert words in response.json()["error"]


# --- the server: v2 REST and gRPC ---


def test_v2_rest_matches_v1(fluxc: httpx.Client) -> None:
    body = {
        "inputs": [{"name": "prompt", "shape": [1], "datatype": "BYTES", "data": ["a red fox"]}],
        "parameters": {k: v for k, v in cheap(max_sequence_length=128).items() if k != "prompt"},
    }
    response = fluxc.post("/v2/models/flux/infer", json=body)
    assert response.status_code == 200, response.text
    (images,) = [output for output in response.json()["outputs"] if output["name"] == "images"]
    assert base64.b64decode(images["data"][0]) == image_bytes(fluxc, max_sequence_length=128)


def test_v2_grpc_with_flux_fields(flux_server: ServerProcess, fluxc: httpx.Client) -> None:
    inputs = []
    for name, datatype, value in (
        ("prompt", "BYTES", b"a red fox"),
        ("negative_prompt", "BYTES", b"blurry"),
        ("true_cfg_scale", "FP32", 2.0),
        ("max_sequence_length", "INT32", 128),
    ):
        item = InferInput(name, [1], datatype)
        item.set_data_from_numpy(np.array([value], dtype={"BYTES": object, "FP32": np.float32}.get(datatype, np.int32)))
        inputs.append(item)
    parameters = {"seed": 5, "height": 64, "width": 64, "num_inference_steps": 2}
    request = InferRequest(model_name="flux", infer_inputs=inputs, parameters=parameters)
    response = grpc_infer(flux_server.grpc_target, request)
    images = {output.name: output for output in response.outputs}["images"].as_numpy()
    png_bytes = images[0]  # raw input contents in, raw files out
    assert open_image(png_bytes).size == (64, 64)
    same = image_bytes(fluxc, negative_prompt="blurry", true_cfg_scale=2.0, max_sequence_length=128)
    assert png_bytes == same


# --- the fields FLUX added, on the other families ---


def test_prompt_2_reaches_sdxl_and_flux_fields_do_not(client: httpx.Client) -> None:
    sdxl = {"prompt": "a red fox", "height": 64, "width": 64, "num_inference_steps": 2, "seed": 5}
    assert only_image(predict(client, {**sdxl, "prompt_2": "a whale"}))[2] != only_image(predict(client, sdxl))[2]
    response = predict(client, {**sdxl, "true_cfg_scale": 2.0})
    assert response.status_code == 400
    assert (
        response.json()["error"]
        == "true_cfg_scale: applies to FLUX, FLUX.1 Kontext, Qwen-Image and Qwen-Image-Edit only, not SDXL, got 2.0"
    )


def test_wan_refuses_image_family_fields(video_server: ServerProcess) -> None:
    video = {"prompt": "a fox", "task_type": "text2video", "num_frames": 5, "video_height": 64, "video_width": 64}
    with httpx.Client(base_url=video_server.url, timeout=120) as http:
        for name, value in (("prompt_2", "x"), ("max_sequence_length", 64)):
            response = predict(http, {**video, name: value})
            assert response.status_code == 400 and "not Wan video" in response.json()["error"], response.text
