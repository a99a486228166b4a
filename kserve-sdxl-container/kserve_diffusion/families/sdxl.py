"""SDXL: base text-to-image, with an optional refiner sharing `text_encoder_2` and the VAE."""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from typing import Any

import torch
from diffusers import DiffusionPipeline, StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline
from PIL.Image import Image

from .. import devices
from ..config import ServerConfig
from ..errors import RequestError
from ..schedulers import SDXL_SCHEDULERS, SchedulerFactory, build_scheduler
from ..schemas import GenerationRequest, Limits
from .loading import load_pretrained, load_single_file

logger = logging.getLogger("kserve.diffusion")
SIZE_MULTIPLE = 8


def with_scheduler(pipeline: DiffusionPipeline, scheduler: Any) -> DiffusionPipeline:
    """A shallow copy of `pipeline` using `scheduler`; the shared pipeline is left untouched."""
    view = copy.copy(pipeline)
    view.scheduler = scheduler
    return view


class SDXLRunner:
    """Loaded SDXL pipelines and the text-to-image flow (plain, refine, ensemble of experts)."""

    tasks = ("text2img",)
    schedulers: Mapping[str, SchedulerFactory] = SDXL_SCHEDULERS

    def __init__(self, base: StableDiffusionXLPipeline, refiner: StableDiffusionXLImg2ImgPipeline | None):
        self.base = base
        self.refiner = refiner

    def check(self, request: GenerationRequest, limits: Limits) -> GenerationRequest:
        """SDXL rules: served task, sizes, scheduler names, refiner-only fields."""
        task = request.task_type or "text2img"
        if task not in self.tasks:
            raise RequestError("task_type", f"this server serves {', '.join(self.tasks)}, got {task!r}")
        for side in ("height", "width"):
            value = getattr(request, side)
            if value % SIZE_MULTIPLE:
                lower = value - value % SIZE_MULTIPLE
                raise RequestError(
                    side,
                    f"must be a multiple of {SIZE_MULTIPLE} (e.g. {lower} or {lower + SIZE_MULTIPLE}), got {value}",
                )
        if request.height * request.width > limits.max_pixels:
            raise RequestError(
                "height",
                f"height x width must be at most {limits.max_pixels} pixels, got "
                f"{request.height} x {request.width} = {request.height * request.width}",
            )
        if request.scheduler not in self.schedulers:
            raise RequestError("scheduler", f"must be one of {', '.join(self.schedulers)}, got {request.scheduler!r}")
        if self.refiner is None:
            if request.high_noise_frac is not None:
                raise RequestError(
                    "high_noise_frac",
                    f"needs a refiner and this server has none (start it with --use_refiner true), "
                    f"got {request.high_noise_frac}",
                )
        elif request.high_noise_frac is None and int(request.refiner_inference_steps * request.strength) < 1:
            raise RequestError(
                "refiner_inference_steps",
                f"refines for refiner_inference_steps x strength steps, which must be at least 1, got "
                f"{request.refiner_inference_steps} x {request.strength}",
            )
        return request.model_copy(update={"task_type": task})

    def _scheduled(self, pipeline: DiffusionPipeline, name: str) -> DiffusionPipeline:
        return with_scheduler(pipeline, build_scheduler(self.schedulers, name, pipeline.scheduler.config))

    def generate(self, request: GenerationRequest, seed: int) -> list[Image]:
        """Text to image; with a refiner either hand over at high_noise_frac or refine with strength."""
        generator = torch.Generator("cpu").manual_seed(seed)
        shared = {
            "prompt": request.prompt,
            "negative_prompt": request.negative_prompt,
            "guidance_scale": request.guidance_scale,
            "num_images_per_prompt": request.num_images,
            "generator": generator,
        }
        base = self._scheduled(self.base, request.scheduler)
        size = {"height": request.height, "width": request.width}
        if self.refiner is None:
            return base(**shared, **size, num_inference_steps=request.num_inference_steps).images
        refiner = self._scheduled(self.refiner, request.scheduler)
        if request.high_noise_frac is not None:
            # Ensemble of experts: the base denoises the high-noise part, the refiner the rest.
            latents = base(
                **shared,
                **size,
                num_inference_steps=request.num_inference_steps,
                denoising_end=request.high_noise_frac,
                output_type="latent",
            ).images
            return refiner(
                **shared,
                image=latents,
                num_inference_steps=request.num_inference_steps,
                denoising_start=request.high_noise_frac,
            ).images
        latents = base(**shared, **size, num_inference_steps=request.num_inference_steps, output_type="latent").images
        return refiner(
            **shared, image=latents, strength=request.strength, num_inference_steps=request.refiner_inference_steps
        ).images


def load(config: ServerConfig) -> SDXLRunner:
    """Load base (and refiner) once, share the refiner's text_encoder_2 and VAE, place on the device."""
    devices.check_device(config.device)
    common: dict[str, Any] = {"dtype": devices.DTYPES[config.dtype], "token": config.hf_token}
    if config.single_file_model:
        base = load_single_file(
            StableDiffusionXLPipeline,
            config.single_file_model,
            config.single_file_config,
            "--single_file",
            **common,
        )
    else:
        base = load_pretrained(StableDiffusionXLPipeline, config.model_id, "--model_id", **common)
    refiner = None
    if config.use_refiner:
        shared = {"text_encoder_2": base.text_encoder_2, "vae": base.vae}
        if config.refiner_single_file_model:
            refiner = load_single_file(
                StableDiffusionXLImg2ImgPipeline,
                config.refiner_single_file_model,
                config.refiner_single_file_config,
                "--refiner_single_file",
                **shared,
                **common,
            )
        else:
            refiner = load_pretrained(
                StableDiffusionXLImg2ImgPipeline, config.refiner_id, "--refiner_id", **shared, **common
            )
    for pipeline in (base, refiner):
        if pipeline is not None:
            pipeline.set_progress_bar_config(disable=True)
            devices.place(pipeline, config.device)
    return SDXLRunner(base, refiner)
