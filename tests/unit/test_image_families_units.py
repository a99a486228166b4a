"""This year's image families without a model: the family and variant read from model_index.json, the request
rules of each variant (guidance, pictures, defaults), `images` over v2, and the --cache support table."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from kserve.protocol.infer_type import InferInput, InferRequest
from kserve_diffusion.api.request import DEFAULT_LIMITS, fill, parse_request
from kserve_diffusion.config import defaults
from kserve_diffusion.errors import ConfigError, RequestError, RequestErrors
from kserve_diffusion.pipelines import serving_family
from kserve_diffusion.pipelines.detect import CLASS_FAMILIES, resolve_model_type
from kserve_diffusion.pipelines.image_families import IMAGE_FAMILIES
from kserve_diffusion.pipelines.image_runner import ImageRunner, default_size
from kserve_diffusion.server.v2_inputs import read_instance

LIMITS = DEFAULT_LIMITS


def folder(tmp_path: Path, name: str, class_name: str, **config: object) -> str:
    """A folder whose model_index.json names `class_name` (nothing else is read before loading)."""
    path = tmp_path / name
    path.mkdir()
    (path / "model_index.json").write_text(json.dumps({"_class_name": class_name, **config}))
    return str(path)


@pytest.mark.parametrize(
    ("class_name", "family"),
    [
        ("StableDiffusionXLPipeline", "sdxl"),
        ("FluxPipeline", "flux"),
        ("WanImageToVideoPipeline", "wan"),
        ("QwenImagePipeline", "qwen_image"),
        ("QwenImageEditPlusPipeline", "qwen_image_edit"),
        ("Flux2KleinPipeline", "flux2"),
        ("Flux2Pipeline", "flux2"),
        ("ZImagePipeline", "z_image"),
        ("FluxKontextPipeline", "flux_kontext"),
    ],
)
def test_model_type_auto_reads_the_family(tmp_path: Path, class_name: str, family: str) -> None:
    config = resolve_model_type(defaults(model_id=folder(tmp_path, "m", class_name)))
    assert config.model_type == family and config.dtype == "float32"  # --dtype auto on the CPU


def test_auto_dtype_follows_the_family_on_a_gpu(tmp_path: Path) -> None:
    qwen = folder(tmp_path, "qwen", "QwenImagePipeline")
    assert resolve_model_type(defaults(model_id=qwen, device="cuda", dtype="auto")).dtype == "bfloat16"
    assert resolve_model_type(defaults(model_id=qwen, device="cuda", dtype="float16")).dtype == "float16"


def test_contradictions_and_unknown_folders_are_startup_errors(tmp_path: Path) -> None:
    qwen = folder(tmp_path, "qwen", "QwenImageEditPipeline")
    with pytest.raises(ConfigError, match=r"--model_type flux contradicts --model_id .*QwenImageEditPipeline, a "):
        resolve_model_type(defaults(model_type="flux", model_id=qwen))
    assert resolve_model_type(defaults(model_type="qwen_image_edit", model_id=qwen)).model_type == "qwen_image_edit"
    other = folder(tmp_path, "sd3", "StableDiffusion3Pipeline")
    with pytest.raises(ConfigError, match="holds a StableDiffusion3Pipeline, which no family here serves"):
        resolve_model_type(defaults(model_id=other))
    with pytest.raises(ConfigError, match="is not a diffusers model folder"):
        resolve_model_type(defaults(model_id=str(tmp_path / "empty-folder-missing")))
    with pytest.raises(ConfigError, match="--model_variant turbo: applies to qwen_image"):
        resolve_model_type(
            defaults(model_id=folder(tmp_path, "sdxl", "StableDiffusionXLPipeline"), model_variant="turbo")
        )
    wan = folder(tmp_path, "wan", "WanPipeline")
    with pytest.raises(ConfigError, match="--video_model_id: adds Wan beside an image model"):
        resolve_model_type(defaults(model_id=wan, video_model_id=wan))


def test_a_lone_checkpoint_file_is_sdxl(tmp_path: Path) -> None:
    checkpoint = tmp_path / "sdxl.safetensors"
    checkpoint.write_bytes(b"")
    config = resolve_model_type(defaults(model_id=str(tmp_path / "no-folder"), single_file_model=str(checkpoint)))
    assert config.model_type == "sdxl"


def test_every_row_class_is_known_and_every_family_is_a_setting() -> None:
    from kserve_diffusion.config.settings import MODEL_TYPES, MODEL_VARIANTS
    from kserve_diffusion.pipelines import FAMILIES

    assert set(MODEL_TYPES) == {"auto", *FAMILIES}
    variants = {name for family in IMAGE_FAMILIES.values() for name in family.variants}
    assert set(MODEL_VARIANTS) == {"auto", *variants}
    for name, family in IMAGE_FAMILIES.items():
        assert all(CLASS_FAMILIES[class_name] == name for class_name in family.class_names)


@pytest.mark.parametrize(
    ("family", "index", "name", "variant"),
    [
        ("flux2", {"_class_name": "Flux2KleinPipeline", "is_distilled": True}, "klein-4b", "klein"),
        ("flux2", {"_class_name": "Flux2KleinPipeline", "is_distilled": False}, "klein-base-4b", "klein_base"),
        ("flux2", {"_class_name": "Flux2Pipeline"}, "FLUX.2-dev", "dev"),
        ("z_image", {"_class_name": "ZImagePipeline"}, "Z-Image-Turbo", "turbo"),
        ("z_image", {"_class_name": "ZImagePipeline"}, "Z-Image", "base"),
        ("qwen_image_edit", {"_class_name": "QwenImageEditPipeline"}, "Qwen-Image-Edit", "edit"),
        ("qwen_image_edit", {"_class_name": "QwenImageEditPlusPipeline"}, "Qwen-Image-Edit-2509", "edit_plus"),
    ],
)
def test_variants_come_from_the_index_and_name(family: str, index: dict, name: str, variant: str) -> None:
    assert IMAGE_FAMILIES[family].detect(index, f"/models/{name}/")[0] == variant


def runner(family: str, variant: str) -> ImageRunner:
    """A runner with no pipelines: enough for its checks."""
    return ImageRunner(IMAGE_FAMILIES[family], variant, {})


def checked(family: str, variant: str, **fields: object) -> object:
    return runner(family, variant).check(parse_request({"prompt": "a fox", **fields}, LIMITS), LIMITS)


def refused(family: str, variant: str, **fields: object) -> str:
    with pytest.raises((RequestError, RequestErrors)) as caught:
        checked(family, variant, **fields)
    return str(caught.value)


def test_each_variant_fills_its_authors_defaults() -> None:
    qwen = checked("qwen_image", "qwen_image")
    assert (qwen.num_inference_steps, qwen.true_cfg_scale, qwen.negative_prompt) == (50, 4.0, " ")
    assert (qwen.width, qwen.height, qwen.scheduler, qwen.max_sequence_length) == (1328, 1328, "FlowMatchEuler", 512)
    plus = checked("qwen_image_edit", "edit_plus", image="eA==")
    assert (plus.task_type, plus.num_inference_steps) == ("edit", 40)
    klein = checked("flux2", "klein")
    assert (klein.num_inference_steps, klein.width, klein.height) == (4, 1024, 1024)
    assert checked("flux2", "dev").guidance_scale == 4.0
    turbo = checked("z_image", "turbo")
    assert (turbo.num_inference_steps, turbo.guidance_scale) == (9, 0.0)
    kontext = checked("flux_kontext", "dev", image="eA==")
    assert (kontext.task_type, kontext.num_inference_steps, kontext.guidance_scale) == ("edit", 28, 2.5)


def test_default_sizes_fit_the_servers_limits() -> None:
    variant = IMAGE_FAMILIES["qwen_image"].variants["qwen_image"]
    assert default_size(variant, LIMITS) == (1328, 1328)
    small = fill_limits(max_side=1024)
    assert default_size(variant, small) == (1024, 1024)
    assert checked_with(small).width == 1024  # a request naming no size never fails on the default


def fill_limits(**values: int) -> object:
    from dataclasses import replace

    return replace(LIMITS, **values)


def checked_with(limits: object) -> object:
    return runner("qwen_image", "qwen_image").check(parse_request({"prompt": "a fox"}, limits), limits)


@pytest.mark.parametrize(
    ("family", "variant", "fields", "message"),
    [
        ("qwen_image", "qwen_image", {"guidance_scale": 3.0}, "its guidance is true_cfg_scale"),
        ("qwen_image", "qwen_image", {"negative_prompt": "x", "true_cfg_scale": 1.0}, "only with true CFG"),
        ("flux2", "klein", {"negative_prompt": "blurry"}, "FLUX.2 [klein]'s pipeline reads no negative prompt"),
        ("flux2", "klein", {"guidance_scale": 2.0}, "FLUX.2 [klein] has no guidance input"),
        ("flux2", "dev", {"true_cfg_scale": 2.0}, "true_cfg_scale: applies to FLUX, FLUX.1 Kontext, Qwen-Image"),
        ("z_image", "turbo", {"negative_prompt": "x"}, "also send guidance_scale > 1"),
        ("flux_kontext", "dev", {"image": "eA==", "true_cfg_scale": 2.0}, "needs a negative_prompt"),
        ("flux_kontext", "dev", {"images": ["eA==", "eA=="]}, "edits from at most 1 picture(s), got 2"),
        ("qwen_image_edit", "edit", {"images": ["eA==", "eA=="]}, "edits from at most 1 picture(s), got 2"),
        ("flux2", "klein", {"images": ["eA=="] * 5}, "edits from at most 4 picture(s), got 5"),
        ("flux2", "dev", {"image": "eA==", "mask": "eA=="}, "asks for inpaint, which this server does not serve"),
        ("qwen_image", "qwen_image", {"images": ["eA=="]}, "asks for edit, which this server does not serve"),
        ("qwen_image", "qwen_image", {"task_type": "img2img", "images": ["eA=="]}, "several pictures are for"),
        ("z_image", "turbo", {"task_type": "text2img", "images": ["eA=="]}, "reads no input picture"),
        ("flux2", "klein", {"images": ["eA=="], "strength": 0.5}, "strength: applies to img2img and inpaint only"),
        ("flux2", "klein", {"scheduler": "FlowMatchEulerKarras"}, "must be one of FlowMatchEuler"),
        ("flux2", "klein", {"width": 72}, "width: must be a multiple of 16"),
    ],
)
def test_what_a_variant_cannot_do_is_a_400(family: str, variant: str, fields: dict, message: str) -> None:
    assert message in refused(family, variant, **fields)


def test_guidance_that_runs_is_accepted() -> None:
    base = checked("flux2", "klein_base", guidance_scale=5.0)
    assert base.guidance_scale == 5.0
    z = checked("z_image", "base", negative_prompt="blurry")  # base: guidance 4.0, so the negative prompt is read
    assert (z.guidance_scale, z.negative_prompt) == (4.0, "blurry")
    kontext = checked("flux_kontext", "dev", image="eA==", negative_prompt="", true_cfg_scale=3.0)
    assert kontext.true_cfg_scale == 3.0
    assert checked("qwen_image", "qwen_image", negative_prompt="ugly").negative_prompt == "ugly"


def test_images_as_a_v2_tensor_of_several_elements() -> None:
    pictures = InferInput("images", [2], "BYTES")
    pictures.set_data_from_numpy(np.array([b"\x89PNG\r\n\x1a\nfile", b"aGVsbG8="], dtype=object), binary_data=True)
    values = read_instance(InferRequest("m", [pictures], parameters={"prompt": "x"}))
    assert values["images"] == [b"\x89PNG\r\n\x1a\nfile", b"aGVsbG8="]
    request = parse_request(values, LIMITS)
    assert request.images == (b"\x89PNG\r\n\x1a\nfile", b"aGVsbG8=")
    too_many = InferInput("images", [11], "BYTES")
    too_many.set_data_from_numpy(np.array([b"a"] * 11, dtype=object), binary_data=False)
    with pytest.raises(RequestError, match=re.escape("images: shape must be [n] with n from 1 to 10, got [11]")):
        read_instance(InferRequest("m", [too_many]))


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("one.png", "images: must be a list of pictures"),
        ([], "images: must hold 1 to 10 pictures, got 0"),
        (["a", 5], "images: [1] must be a picture"),
        (["a", ""], "images: [1] must be a picture"),
    ],
)
def test_images_field_errors(value: object, message: str) -> None:
    with pytest.raises(RequestErrors, match=re.escape(message)):
        parse_request({"prompt": "x", "images": value}, LIMITS)


@pytest.mark.parametrize(
    ("class_name", "cache", "message"),
    [
        ("QwenImagePipeline", "first_block", "--cache first_block: diffusers' hooks for it do not run on qwen_image"),
        ("Flux2KleinPipeline", "first_block", "(use --cache taylorseer or mag)"),
        ("ZImagePipeline", "taylorseer", "do not run on z_image's transformer (use --cache none, or --compile)"),
    ],
)
def test_caches_a_family_cannot_run_are_startup_errors(
    tmp_path: Path, class_name: str, cache: str, message: str
) -> None:
    config = resolve_model_type(defaults(model_id=folder(tmp_path, "m", class_name), cache=cache))
    with pytest.raises(ConfigError, match=re.escape(message)):
        serving_family(config)


def test_fill_keeps_what_the_client_sent() -> None:
    request = fill(parse_request({"prompt": "x", "images": ["eA=="]}, LIMITS), width=64)
    assert request.model_fields_set == {"prompt", "images"}


def test_an_edits_pictures_share_one_pixel_budget() -> None:
    import asyncio
    import base64
    import io

    from kserve_diffusion.runtime.inputs import InputLoader, InputPolicy
    from PIL import Image

    def picture(width: int, height: int) -> str:
        buffer = io.BytesIO()
        Image.new("RGB", (width, height), "grey").save(buffer, format="PNG")
        return base64.b64encode(buffer.getvalue()).decode()

    policy = InputPolicy.from_config(defaults(max_image_pixels=10_000))
    loader = InputLoader(policy, LIMITS, {"edit": 16})
    plus = runner("qwen_image_edit", "edit_plus")
    fitting = plus.check(
        parse_request({"prompt": "x", "images": [picture(100, 100), picture(100, 100)]}, LIMITS), LIMITS
    )
    request, inputs = asyncio.run(loader.load(fitting))
    assert len(inputs.pictures) == 2 and (request.width, request.height) == (96, 96)
    three = [picture(100, 100)] * 3  # 30,000 pixels: past twice 10,000 before the third is decoded
    over = plus.check(parse_request({"prompt": "x", "images": three}, LIMITS), LIMITS)
    with pytest.raises(
        RequestError,
        match=r"images: the pictures together may hold at most 20000 pixels .*images\[2\] has 10000, only 0 remain",
    ):
        asyncio.run(loader.load(over))


def test_images_of_other_schemes_are_never_read() -> None:
    import asyncio

    from kserve_diffusion.runtime.inputs import InputLoader, InputPolicy

    loader = InputLoader(InputPolicy.from_config(defaults()), LIMITS, {"edit": 16})
    request = runner("flux2", "klein").check(
        parse_request({"prompt": "x", "images": ["file:///etc/passwd"]}, LIMITS), LIMITS
    )
    with pytest.raises(RequestError, match=r"images\[0\]: only http\(s\) and data URLs are read, got a file: URL"):
        asyncio.run(loader.load(request))
