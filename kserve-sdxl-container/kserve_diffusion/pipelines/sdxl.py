"""SDXL: text-to-image with an optional refiner, image-to-image and inpainting, every weight loaded once."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    DiffusionPipeline,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLInpaintPipeline,
    StableDiffusionXLPipeline,
)
from PIL.Image import Image

from ..api.inputs import NO_INPUTS, InputImages
from ..api.request import GenerationRequest, Limits, fill, with_defaults
from ..api.rules import check_family_fields, check_image_size, resolve_task
from ..config import ServerConfig
from ..errors import ConfigError, RequestError
from . import devices, lora, quantize, speed
from .base import StepObserver, step_hooks, with_scheduler
from .loading import load_pretrained, load_single_file
from .schedulers import SDXL_SCHEDULERS, SchedulerFactory, build_scheduler, scheduler_name

SIZE_MULTIPLE = 8
DEFAULT_STEPS, DEFAULT_REFINER_STEPS = 25, 50  # seed 000's defaults


class SDXLRunner:
    """Loaded SDXL pipelines: text-to-image (plain, refine, ensemble of experts), image-to-image, inpainting."""

    family = "sdxl"
    tasks = ("text2img", "img2img", "inpaint")
    default_task = "text2img"
    size_multiples = dict.fromkeys(tasks, SIZE_MULTIPLE)
    schedulers: Mapping[str, SchedulerFactory] = SDXL_SCHEDULERS

    def __init__(
        self,
        base: StableDiffusionXLPipeline,
        refiner: StableDiffusionXLImg2ImgPipeline | None,
        img2img: StableDiffusionXLImg2ImgPipeline,
        inpaint: StableDiffusionXLInpaintPipeline,
        adapters: lora.LoraAdapters | None = None,
    ):
        self.base = base
        self.refiner = refiner
        self.img2img = img2img
        self.inpaint = inpaint
        self.adapters = adapters

    def uses_refiner(self, request: GenerationRequest) -> bool:
        """Whether this request goes through the refiner (the server has one and the request does not opt out)."""
        refinable = request.task_type in ("text2img", "img2img")
        return self.refiner is not None and request.use_refiner is not False and refinable

    def check(self, request: GenerationRequest, limits: Limits) -> GenerationRequest:
        """SDXL rules: served task, sizes, scheduler names, refiner fields, steps x strength."""
        request = resolve_task(request, self.default_task, self.tasks)
        task = request.task_type
        check_family_fields(request, self.family)
        check_image_size(request, limits, SIZE_MULTIPLE)
        request = with_defaults(
            request, limits, num_inference_steps=DEFAULT_STEPS, refiner_inference_steps=DEFAULT_REFINER_STEPS
        )
        request = fill(request, scheduler=scheduler_name(self.family, request.scheduler))
        assert request.num_inference_steps is not None and request.refiner_inference_steps is not None
        self._check_refiner_fields(request)
        self._check_loras(request)
        assert request.strength is not None  # resolve_task filled it in
        if self.uses_refiner(request) and request.high_noise_frac is None:
            steps_field, steps = "refiner_inference_steps", request.refiner_inference_steps
        elif task != "text2img":
            steps_field, steps = "num_inference_steps", request.num_inference_steps
        else:
            return request
        if int(steps * request.strength) < 1:
            raise RequestError(
                steps_field,
                f"{task} runs {steps_field} x strength steps, which must be at least 1, "
                f"got {steps} x {request.strength}",
            )
        return request

    def _check_loras(self, request: GenerationRequest) -> None:
        lora.check(self.adapters, request)
        if request.loras and request.task_type == "inpaint" and self.inpaint.unet is not self.base.unet:
            raise RequestError(
                "loras", "adapters apply to the base model's UNet, not to the dedicated inpainting model's"
            )

    def use_loras(self, request: GenerationRequest) -> lora.Activation | None:
        """Activate the request's adapters (accelerator thread)."""
        return lora.activate(self.adapters, request)

    @contextlib.contextmanager
    def _refining(self) -> Iterator[None]:
        """Adapters apply to the base only: the refiner shares text_encoder_2, whose LoRA layers pause meanwhile."""
        if self.adapters is None:
            yield
            return
        with self.adapters.suspended("text_encoder_2"):
            yield

    def _check_refiner_fields(self, request: GenerationRequest) -> None:
        if request.use_refiner and self.refiner is None:
            raise RequestError("use_refiner", "this server has no refiner (start it with --use_refiner true), got true")
        if request.use_refiner and request.task_type == "inpaint":
            raise RequestError("use_refiner", "does not apply to inpaint, got true")
        if request.high_noise_frac is None:
            return
        if request.task_type != "text2img":
            raise RequestError(
                "high_noise_frac", f"applies to text2img only, got {request.high_noise_frac} with {request.task_type}"
            )
        if not self.uses_refiner(request):
            why = "use_refiner is false"
            if self.refiner is None:
                why = "this server has none (start it with --use_refiner true)"
            raise RequestError("high_noise_frac", f"needs the refiner and {why}, got {request.high_noise_frac}")

    def _scheduled(self, pipeline: DiffusionPipeline, name: str) -> DiffusionPipeline:
        return with_scheduler(pipeline, build_scheduler(self.schedulers, name, pipeline.scheduler.config))

    def generate(
        self,
        request: GenerationRequest,
        seed: int,
        inputs: InputImages = NO_INPUTS,
        control: StepObserver | None = None,
    ) -> list[Image]:
        """Run the request's task on the calling (accelerator) thread."""
        generator = torch.Generator("cpu").manual_seed(seed)
        shared = {
            "prompt": request.prompt,
            "prompt_2": request.prompt_2,
            "negative_prompt": request.negative_prompt,
            "guidance_scale": request.guidance_scale,
            "num_images_per_prompt": request.num_images,
            "generator": generator,
            **step_hooks(control),
        }
        run = {"text2img": self._text_to_image, "img2img": self._image_to_image, "inpaint": self._inpaint}
        return run[request.task_type](request, shared, inputs)

    def _inpaint(self, request: GenerationRequest, shared: dict[str, Any], inputs: InputImages) -> list[Image]:
        """Repaint the white part of the mask (base modules or the dedicated inpainting UNet)."""
        inpaint = self._scheduled(self.inpaint, request.scheduler)
        return inpaint(
            **shared,
            image=inputs.image,
            mask_image=inputs.mask,
            height=request.height,
            width=request.width,
            strength=request.strength,
            num_inference_steps=request.num_inference_steps,
        ).images

    def _image_to_image(self, request: GenerationRequest, shared: dict[str, Any], inputs: InputImages) -> list[Image]:
        """Seed 000's img2img: the refiner refines the given picture; without it (or opted out), the base does."""
        if self.uses_refiner(request):
            pipeline, steps = self.refiner, request.refiner_inference_steps
        else:
            pipeline, steps = self.img2img, request.num_inference_steps
        scheduled = self._scheduled(pipeline, request.scheduler)
        with self._refining() if pipeline is self.refiner else contextlib.nullcontext():
            return scheduled(**shared, image=inputs.image, strength=request.strength, num_inference_steps=steps).images

    def _text_to_image(self, request: GenerationRequest, shared: dict[str, Any], _: InputImages) -> list[Image]:
        """Text to image; with the refiner either hand over at high_noise_frac or refine with strength."""
        base = self._scheduled(self.base, request.scheduler)
        size = {"height": request.height, "width": request.width}
        if not self.uses_refiner(request):
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
            with self._refining():
                return refiner(
                    **shared,
                    image=latents,
                    num_inference_steps=request.num_inference_steps,
                    denoising_start=request.high_noise_frac,
                ).images
        latents = base(**shared, **size, num_inference_steps=request.num_inference_steps, output_type="latent").images
        with self._refining():
            return refiner(
                **shared, image=latents, strength=request.strength, num_inference_steps=request.refiner_inference_steps
            ).images


def _sharing_base(cls: type[DiffusionPipeline], base: StableDiffusionXLPipeline) -> DiffusionPipeline:
    """A `cls` pipeline made of the base's own module objects (no copy, no cast, nothing loaded)."""
    return cls(**base.components, force_zeros_for_empty_prompt=base.config.force_zeros_for_empty_prompt)


# Components a dedicated inpainting checkpoint takes from the base: SDXL inpainting 0.1 fine-tunes the UNet only.
INPAINT_SHARED = ("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "vae")


def _load_inpaint(
    config: ServerConfig, base: StableDiffusionXLPipeline, common: dict[str, Any]
) -> DiffusionPipeline | None:
    """The dedicated inpainting pipeline (its UNet, the base's other modules); None without one (`assemble`
    then builds inpainting from the base's modules)."""
    if config.inpaint_model_id is None:
        if config.inpaint_single_file_config is not None:
            raise ConfigError("--inpaint_single_file_config: needs --inpaint_model_id set to a single file")
        return None
    shared = {name: getattr(base, name) for name in INPAINT_SHARED}
    if Path(config.inpaint_model_id).expanduser().is_file():
        return load_single_file(
            StableDiffusionXLInpaintPipeline,
            config.inpaint_model_id,
            config.inpaint_single_file_config,
            "--inpaint_model_id",
            "--inpaint_single_file_config",
            **shared,
            **common,
        )
    if config.inpaint_single_file_config is not None:
        raise ConfigError(
            "--inpaint_single_file_config: only used when --inpaint_model_id is a single file, "
            f"got the folder or hub id {config.inpaint_model_id}"
        )
    return load_pretrained(
        StableDiffusionXLInpaintPipeline, config.inpaint_model_id, "--inpaint_model_id", **shared, **common
    )


def load(config: ServerConfig) -> SDXLRunner:
    """Load every weight once: base, optional refiner (sharing text_encoder_2 and the VAE), and the
    image-to-image and inpainting pipelines built from the base's modules; then place them on the device."""
    devices.check_device(config.device)
    common: dict[str, Any] = {"dtype": devices.DTYPES[config.dtype], "token": config.hf_token}
    if config.single_file_model:
        base = load_single_file(
            StableDiffusionXLPipeline,
            config.single_file_model,
            config.single_file_config,
            "--single_file_model",
            "--single_file_config",
            **common,
        )
    else:
        quantized = {"quantization_config": quantize.quantization_config(config, "sdxl", config.model_id, "--model_id")}
        base = load_pretrained(StableDiffusionXLPipeline, config.model_id, "--model_id", **quantized, **common)
    refiner = None
    if config.use_refiner:
        shared = {"text_encoder_2": base.text_encoder_2, "vae": base.vae}
        if config.refiner_single_file_model:
            refiner = load_single_file(
                StableDiffusionXLImg2ImgPipeline,
                config.refiner_single_file_model,
                config.refiner_single_file_config,
                "--refiner_single_file_model",
                "--refiner_single_file_config",
                **shared,
                **common,
            )
        else:
            refiner = load_pretrained(
                StableDiffusionXLImg2ImgPipeline, config.refiner_id, "--refiner_id", **shared, **common
            )
    return assemble(base, refiner, _load_inpaint(config, base, common), config)


def assemble(
    base: StableDiffusionXLPipeline,
    refiner: StableDiffusionXLImg2ImgPipeline | None,
    inpaint: DiffusionPipeline | None,
    config: ServerConfig,
) -> SDXLRunner:
    """The runner for loaded pipelines: image-to-image (and, when `inpaint` is None, inpainting) made of the
    base's modules, every pipeline placed on the device, then the speed options applied."""
    img2img = _sharing_base(StableDiffusionXLImg2ImgPipeline, base)
    inpaint = inpaint or _sharing_base(StableDiffusionXLInpaintPipeline, base)
    pipelines = (base, refiner, img2img, inpaint)
    for pipeline in pipelines:
        if pipeline is not None:
            pipeline.set_progress_bar_config(disable=True)
            # marks/ watermarks as --provenance says; diffusers' own (on with invisible-watermark) failed low images
            pipeline.watermark = None
            devices.apply_vae_options(pipeline, config)
            # Offload modes hook modules; each pipeline re-installs its hooks after every call.
            devices.place(pipeline, config.device)
    adapters = lora.open_adapters(base, "sdxl", config)  # before compiling: --compile needs its slots first
    speed.apply_speed_options(pipelines, config)
    return SDXLRunner(base, refiner, img2img, inpaint, adapters)
