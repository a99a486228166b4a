"""FLUX.1 (dev and schnell): text-to-image, image-to-image and inpainting on one set of weights."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    DiffusionPipeline,
    FluxImg2ImgPipeline,
    FluxInpaintPipeline,
    FluxPipeline,
    FluxTransformer2DModel,
)
from PIL.Image import Image

from ..api.inputs import NO_INPUTS, InputImages
from ..api.request import GenerationRequest, Limits, fill, with_defaults
from ..api.rules import check_family_fields, check_image_size, resolve_task
from ..config import ServerConfig
from ..errors import ConfigError, RequestError
from . import attention, cache, devices, lora, quantize, speed
from .base import StepObserver, step_hooks, with_scheduler
from .loading import load_pretrained, load_single_file_component
from .schedulers import FLUX_SCHEDULERS, SchedulerFactory, build_scheduler, scheduler_name

logger = logging.getLogger("kserve.diffusion")
SIZE_MULTIPLE = 16  # VAE /8, then 2x2 latent patches


@dataclass(frozen=True)
class Variant:
    """What a FLUX.1 variant was distilled for: the defaults of a request that does not say."""

    title: str
    steps: int
    guidance_scale: float
    max_sequence_length: int


# Black Forest Labs' reference settings: schnell is timestep-distilled for 1-4 steps with no
# guidance input and 256 T5 tokens; dev is guidance-distilled and reads 512 tokens.
VARIANTS: dict[str, Variant] = {
    "dev": Variant("FLUX.1-dev", steps=28, guidance_scale=3.5, max_sequence_length=512),
    "schnell": Variant("FLUX.1-schnell", steps=4, guidance_scale=0.0, max_sequence_length=256),
}
# Server options that only mean something for SDXL; given with FLUX they are a startup error.
SDXL_ONLY_OPTIONS = (
    "single_file_config",
    "refiner_id",
    "refiner_single_file_model",
    "refiner_single_file_config",
    "inpaint_model_id",
    "inpaint_single_file_config",
)


def detect_variant(transformer_config: Mapping[str, Any], model_id: str) -> tuple[str, str]:
    """(variant, why) from the transformer config (dev has guidance embeddings, schnell none), else the name."""
    if "guidance_embeds" in transformer_config:
        if transformer_config["guidance_embeds"]:
            return "dev", "its transformer has guidance embeddings"
        return "schnell", "its transformer has no guidance embeddings"
    name = Path(model_id).name.lower()
    for variant in ("schnell", "dev"):
        if variant in name:
            return variant, f"its name {Path(model_id).name!r} says so"
    raise ConfigError(f"--flux_variant: cannot tell dev from schnell for {model_id}; set --flux_variant dev or schnell")


class FluxRunner:
    """Loaded FLUX pipelines: text-to-image, and image-to-image and inpainting sharing its modules."""

    family = "flux"
    tasks = ("text2img", "img2img", "inpaint")
    default_task = "text2img"
    size_multiples = dict.fromkeys(tasks, SIZE_MULTIPLE)
    schedulers: Mapping[str, SchedulerFactory] = FLUX_SCHEDULERS

    def __init__(
        self,
        base: FluxPipeline,
        img2img: FluxImg2ImgPipeline,
        inpaint: FluxInpaintPipeline,
        variant: str,
        adapters: lora.LoraAdapters | None = None,
        denoiser_cache: cache.DenoiserCache | None = None,
    ):
        self.pipelines: dict[str, DiffusionPipeline] = {"text2img": base, "img2img": img2img, "inpaint": inpaint}
        self.variant_name = variant
        self.variant = VARIANTS[variant]
        self.adapters = adapters
        self.cache = denoiser_cache

    def use_loras(self, request: GenerationRequest) -> lora.Activation | None:
        """Activate the request's adapters (accelerator thread)."""
        return lora.activate(self.adapters, request)

    def check(self, request: GenerationRequest, limits: Limits) -> GenerationRequest:
        """FLUX rules: sizes in multiples of 16, flow schedulers, the variant's defaults, true CFG pairing."""
        request = resolve_task(request, self.default_task, self.tasks)
        check_family_fields(request, self.family)
        if request.task_type == "text2img" and "strength" in request.model_fields_set:
            raise RequestError("strength", f"applies to img2img and inpaint only, got {request.strength}")
        check_image_size(request, limits, SIZE_MULTIPLE)
        request = with_defaults(
            request,
            limits,
            num_inference_steps=self.variant.steps,
            guidance_scale=self.variant.guidance_scale,
            max_sequence_length=self.variant.max_sequence_length,
        )
        request = fill(request, scheduler=scheduler_name(self.family, request.scheduler))
        if self.variant_name == "schnell" and request.guidance_scale != 0:
            raise RequestError(
                "guidance_scale",
                f"{self.variant.title} has no guidance input and would ignore it: leave it out or send 0 "
                f"(true_cfg_scale with negative_prompt is the guidance it can use), got {request.guidance_scale}",
            )
        self._check_true_cfg(request)
        lora.check(self.adapters, request)
        return request

    @staticmethod
    def _check_true_cfg(request: GenerationRequest) -> None:
        """diffusers runs true CFG only with both a negative prompt and true_cfg_scale > 1; one alone is ignored."""
        true_cfg = request.true_cfg_scale
        if request.negative_prompt is not None and (true_cfg is None or true_cfg <= 1):
            got = "no true_cfg_scale" if true_cfg is None else f"true_cfg_scale {true_cfg}"
            raise RequestError(
                "negative_prompt",
                "FLUX uses it only with true CFG: also send true_cfg_scale > 1 (e.g. 4.0; each step then runs "
                f"the transformer twice), got {got}",
            )
        if true_cfg is not None and true_cfg > 1 and request.negative_prompt is None:
            raise RequestError(
                "true_cfg_scale", f"needs a negative_prompt to guide away from (it may be empty), got {true_cfg}"
            )

    def generate(
        self,
        request: GenerationRequest,
        seed: int,
        inputs: InputImages = NO_INPUTS,
        control: StepObserver | None = None,
    ) -> list[Image]:
        """Run the request's task on the calling (accelerator) thread."""
        pipeline = self.pipelines[request.task_type or self.default_task]
        scheduled = with_scheduler(
            pipeline, build_scheduler(self.schedulers, request.scheduler, pipeline.scheduler.config)
        )
        kwargs: dict[str, Any] = {
            "prompt": request.prompt,
            "prompt_2": request.prompt_2,
            "negative_prompt": request.negative_prompt,
            "true_cfg_scale": request.true_cfg_scale or 1.0,
            "height": request.height,
            "width": request.width,
            "num_inference_steps": request.num_inference_steps,
            "guidance_scale": request.guidance_scale,
            "max_sequence_length": request.max_sequence_length,
            "num_images_per_prompt": request.num_images,
            "generator": torch.Generator("cpu").manual_seed(seed),
            **step_hooks(control),
        }
        if request.task_type != "text2img":
            kwargs.update(image=inputs.image, strength=request.strength)
        if request.task_type == "inpaint":
            kwargs["mask_image"] = inputs.mask
        steps = request.num_inference_steps or 1
        if request.task_type != "text2img":  # the image tasks run steps x strength of them
            steps = int(steps * (request.strength or 1.0))
        with cache.counted(self.cache, steps, control), cache.context(self.cache, pipeline, request.task_type):
            return scheduled(**kwargs).images


def _check_options(config: ServerConfig) -> None:
    for name in SDXL_ONLY_OPTIONS:
        if getattr(config, name):
            raise ConfigError(f"--{name}: applies to SDXL only, not --model_type flux")
    if config.use_refiner:
        raise ConfigError("--use_refiner: FLUX has no refiner")


def load(config: ServerConfig) -> FluxRunner:
    """Load FLUX once (a folder, a hub id, or a single-file transformer with the rest from --model_id) and
    build the image-to-image and inpainting pipelines from the same module objects; then place them."""
    _check_options(config)
    devices.check_device(config.device)
    common: dict[str, Any] = {"dtype": devices.DTYPES[config.dtype], "token": config.hf_token}
    if config.single_file_model:
        transformer = load_single_file_component(
            FluxTransformer2DModel,
            config.single_file_model,
            config.model_id,
            "transformer",
            "--single_file_model",
            **common,
        )
        base = load_pretrained(FluxPipeline, config.model_id, "--model_id", transformer=transformer, **common)
    else:
        quantization = quantize.quantization_config(config, "flux", config.model_id, "--model_id")
        base = load_pretrained(FluxPipeline, config.model_id, "--model_id", quantization_config=quantization, **common)
    if config.flux_variant == "auto":
        variant, why = detect_variant(base.transformer.config, config.model_id)
        logger.info("serving %s: %s (set --flux_variant to override)", VARIANTS[variant].title, why)
    else:
        variant = config.flux_variant
    return assemble(base, config, variant)


def assemble(base: FluxPipeline, config: ServerConfig, variant: str) -> FluxRunner:
    """The runner for a loaded FLUX pipeline: image-to-image and inpainting made of its modules, all placed on
    the device, then the speed options applied."""
    # diffusers' own constructors on the base's module objects: nothing is loaded or copied twice.
    img2img = FluxImg2ImgPipeline(**base.components)
    inpaint = FluxInpaintPipeline(**base.components)
    pipelines = (base, img2img, inpaint)
    for pipeline in pipelines:
        pipeline.set_progress_bar_config(disable=True)
        devices.apply_vae_options(pipeline, config)
        devices.place(pipeline, config.device)
    adapters = lora.open_adapters(base, "flux", config)  # before compiling: --compile needs its slots first
    attention.apply_backend(pipelines, "flux", config)
    denoiser_cache = cache.apply_cache(pipelines, "flux", config)  # its hooks too
    speed.apply_speed_options(pipelines, config)
    return FluxRunner(base, img2img, inpaint, variant, adapters, denoiser_cache)
