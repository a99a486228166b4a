"""The one runner of every `image_families.py` row: loads the variant the folder holds, checks requests against
the variant's rules and defaults, and calls the task's diffusers pipeline."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping
from typing import Any

import torch
from diffusers import DiffusionPipeline
from PIL.Image import Image

from ..api.inputs import NO_INPUTS, InputImages
from ..api.request import FAMILY_TITLES, GenerationRequest, Limits, fill, shown, with_defaults
from ..api.rules import check_family_fields, check_image_size, resolve_task
from ..config import ServerConfig
from ..errors import ConfigError, RequestError
from . import attention, cache, devices, lora, quantize, speed
from .base import Family, StepObserver, step_hooks, with_scheduler
from .flux import SDXL_ONLY_OPTIONS
from .image_families import IMAGE_FAMILIES, ImageFamily, Variant
from .loading import load_pretrained, pipeline_index
from .schedulers import FAMILY_SCHEDULERS, build_scheduler, scheduler_name

logger = logging.getLogger("kserve.diffusion")
SIZE_MULTIPLE = 16  # every family here: a VAE that downsamples by 8, then 2x2 latent patches
IMAGE_TASKS_WITH_STRENGTH = ("img2img", "inpaint")
# Options of other families; given with one of these families they are a start-up error.
FOREIGN_OPTIONS = ("single_file_model", *SDXL_ONLY_OPTIONS)


def _parameters(cls: type[DiffusionPipeline]) -> frozenset[str]:
    return frozenset(inspect.signature(cls.__call__).parameters)


class ImageRunner:
    """A loaded variant of an image family: its task pipelines share one set of modules."""

    size_multiples: Mapping[str, int]

    def __init__(
        self,
        family: ImageFamily,
        variant_name: str,
        pipelines: dict[str, DiffusionPipeline],
        adapters: lora.LoraAdapters | None = None,
        denoiser_cache: cache.DenoiserCache | None = None,
    ):
        self.family = family.name
        self.title = FAMILY_TITLES[family.name]
        self.variant_name = variant_name
        self.variant: Variant = family.variants[variant_name]
        self.pipelines = pipelines
        self.tasks = self.variant.tasks
        self.default_task = self.tasks[0]
        self.size_multiples = dict.fromkeys(self.tasks, SIZE_MULTIPLE)
        self.adapters = adapters
        self.cache = denoiser_cache
        self.schedulers = FAMILY_SCHEDULERS[family.name][0]
        self._accepted = {task: _parameters(type(pipeline)) for task, pipeline in pipelines.items()}

    def use_loras(self, request: GenerationRequest) -> lora.Activation | None:
        """Activate the request's adapters (accelerator thread)."""
        return lora.activate(self.adapters, request)

    def check(self, request: GenerationRequest, limits: Limits) -> GenerationRequest:
        """The variant's rules: its tasks, sizes in multiples of 16, its guidance, its picture limit, its defaults."""
        request = resolve_task(request, self.default_task, self.tasks)
        check_family_fields(request, self.family)
        title = self.variant.title
        if request.task_type not in IMAGE_TASKS_WITH_STRENGTH and "strength" in request.model_fields_set:
            raise RequestError(
                "strength", f"applies to img2img and inpaint only, not {request.task_type}, got {request.strength}"
            )
        if request.images is not None and len(request.images) > self.variant.max_pictures:
            raise RequestError(
                "images",
                f"{title} edits from at most {self.variant.max_pictures} picture(s), got {len(request.images)}",
            )
        if {"width", "height"} & request.model_fields_set or request.task_type != "text2img":
            check_image_size(request, limits, SIZE_MULTIPLE)
        width, height = default_size(self.variant, limits)
        request = with_defaults(
            request,
            limits,
            num_inference_steps=self.variant.steps,
            max_sequence_length=self.variant.max_sequence_length,
            width=width,
            height=height,
        )
        request = self._guided(request)
        request = fill(request, scheduler=scheduler_name(self.family, request.scheduler))
        lora.check(self.adapters, request)
        return request

    def _guided(self, request: GenerationRequest) -> GenerationRequest:
        """The guidance fields checked against what the variant reads (never silently dropped), defaults filled."""
        guidance, title, given = self.variant.guidance, self.variant.title, request.model_fields_set
        if guidance.guidance_scale is None and "guidance_scale" in given:
            instead = " (its guidance is true_cfg_scale)" if guidance.true_cfg_scale is not None else ""
            raise RequestError(
                "guidance_scale",
                f"{title} has no guidance input and would ignore it{instead}: leave it out, "
                f"got {request.guidance_scale}",
            )
        if guidance.guidance_scale is not None and "guidance_scale" not in given:
            request = fill(request, guidance_scale=guidance.guidance_scale)
        negative = request.negative_prompt
        if negative is not None and not guidance.takes_negative_prompt:
            raise RequestError("negative_prompt", f"{title}'s pipeline reads no negative prompt, got {shown(negative)}")
        if negative is not None and guidance.cfg_above_one and request.guidance_scale <= 1:
            raise RequestError(
                "negative_prompt",
                f"{title} reads it only with classifier-free guidance: also send guidance_scale > 1 (e.g. 4.0; each "
                f"step then runs the transformer twice), got guidance_scale {request.guidance_scale}",
            )
        if guidance.true_cfg_scale is None:
            return request
        true_cfg = request.true_cfg_scale if "true_cfg_scale" in given else guidance.true_cfg_scale
        if negative is not None and true_cfg <= 1:
            raise RequestError(
                "negative_prompt",
                f"{title} reads it only with true CFG: also send true_cfg_scale > 1 (e.g. 4.0), got true_cfg_scale "
                f"{true_cfg}",
            )
        if true_cfg > 1 and negative is None:
            if guidance.default_negative_prompt is None:
                raise RequestError(
                    "true_cfg_scale", f"needs a negative_prompt to guide away from (it may be empty), got {true_cfg}"
                )
            negative = guidance.default_negative_prompt  # the authors' own default
        return fill(request, true_cfg_scale=true_cfg, negative_prompt=negative)

    def _arguments(self, request: GenerationRequest, seed: int, inputs: InputImages, control: Any) -> dict[str, Any]:
        task = request.task_type or self.default_task
        guidance = self.variant.guidance
        kwargs: dict[str, Any] = {
            "prompt": request.prompt,
            "prompt_2": request.prompt_2,
            "negative_prompt": request.negative_prompt,
            "height": request.height,
            "width": request.width,
            "num_inference_steps": request.num_inference_steps,
            "max_sequence_length": request.max_sequence_length,
            "num_images_per_prompt": request.num_images,
            "generator": torch.Generator("cpu").manual_seed(seed),
            **step_hooks(control),
        }
        if guidance.guidance_scale is not None:
            kwargs["guidance_scale"] = request.guidance_scale
        elif "guidance_scale" in self._accepted[task] and guidance.true_cfg_scale is None:
            kwargs["guidance_scale"] = 1.0  # a step-distilled model: no guidance (its pipeline's default warns)
        if guidance.true_cfg_scale is not None:
            kwargs["true_cfg_scale"] = request.true_cfg_scale
        if task == "edit":
            pictures = list(inputs.pictures)
            kwargs["image"] = pictures if self.variant.max_pictures > 1 else pictures[0]
        elif task in IMAGE_TASKS_WITH_STRENGTH:
            kwargs.update(image=inputs.image, strength=request.strength)
            if task == "inpaint":
                kwargs["mask_image"] = inputs.mask
        accepted = self._accepted[task]
        if "max_area" in accepted:  # FLUX.1 Kontext would resize the output to ~1 megapixel and its preferred
            kwargs.update(max_area=request.width * request.height, _auto_resize=False)  # shapes: ours is settled
        return {name: value for name, value in kwargs.items() if name in accepted and value is not None}

    def generate(
        self,
        request: GenerationRequest,
        seed: int,
        inputs: InputImages = NO_INPUTS,
        control: StepObserver | None = None,
    ) -> list[Image]:
        """Run the request's task on the calling (accelerator) thread."""
        task = request.task_type or self.default_task
        pipeline = self.pipelines[task]
        scheduled = with_scheduler(
            pipeline, build_scheduler(self.schedulers, request.scheduler, pipeline.scheduler.config)
        )
        steps = request.num_inference_steps or 1
        if task in IMAGE_TASKS_WITH_STRENGTH:  # the image tasks run steps x strength of them
            steps = int(steps * (request.strength or 1.0))
        with cache.counted(self.cache, steps, control), cache.context(self.cache, pipeline, task):
            return scheduled(**self._arguments(request, seed, inputs, control)).images


def default_size(variant: Variant, limits: Limits) -> tuple[int, int]:
    """The variant's default (width, height), scaled down to fit the server's --max_side and --max_pixels."""
    scale = min(
        1.0,
        limits.max_side / max(variant.width, variant.height),
        (limits.max_pixels / (variant.width * variant.height)) ** 0.5,
    )
    return tuple(  # type: ignore[return-value]
        max(SIZE_MULTIPLE, int(side * scale) // SIZE_MULTIPLE * SIZE_MULTIPLE)
        for side in (variant.width, variant.height)
    )


def _check_options(config: ServerConfig, family: ImageFamily) -> None:
    for name in FOREIGN_OPTIONS:
        if getattr(config, name):
            raise ConfigError(f"--{name}: applies to SDXL (and FLUX.1), not --model_type {family.name}")
    if config.use_refiner:
        raise ConfigError(f"--use_refiner: {family.title} has no refiner")


def choose_variant(config: ServerConfig, family: ImageFamily, index: Mapping[str, Any]) -> str:
    """The variant to serve: --model_variant when given (it must be one of the family's), else the folder's."""
    if config.model_variant != "auto":
        if config.model_variant not in family.variants:
            raise ConfigError(
                f"--model_variant: {family.title} has {', '.join(family.variants)}, got {config.model_variant!r}"
            )
        return config.model_variant
    variant, why = family.detect(index, config.model_id)
    logger.info("serving %s: %s (set --model_variant to override)", family.variants[variant].title, why)
    return variant


def load(config: ServerConfig, family: ImageFamily) -> ImageRunner:
    """Load the family's variant from --model_id (its own text/picture processors as processors.py says), build the
    other tasks' pipelines from the same modules, then place them and apply the speed options."""
    _check_options(config, family)
    devices.check_device(config.device)
    index = pipeline_index(config.model_id, "--model_id", config.hf_token)
    variant_name = choose_variant(config, family, index)
    variant = family.variants[variant_name]
    options: dict[str, Any] = {"token": config.hf_token}
    own = {name: loader(config.model_id, name, options) for name, loader in family.own_components.items()}
    quantization = quantize.quantization_config(config, family.name, config.model_id, "--model_id", index)
    first = next(iter(variant.pipelines.values()))
    base = load_pretrained(
        first,
        config.model_id,
        "--model_id",
        dtype=devices.DTYPES[config.dtype],
        quantization_config=quantization,
        **dict.fromkeys(own),  # not loaded by diffusers: set below
        **options,
    )
    base.register_modules(**own)
    return assemble(base, config, family, variant_name)


def assemble(base: DiffusionPipeline, config: ServerConfig, family: ImageFamily, variant_name: str) -> ImageRunner:
    """The runner for a loaded pipeline: every task's pipeline made of its modules (diffusers' from_pipe keeps its
    configuration, e.g. FLUX.2 [klein]'s is_distilled), all placed on the device, then the speed options."""
    variant = family.variants[variant_name]
    built: dict[type[DiffusionPipeline], DiffusionPipeline] = {type(base): base}
    pipelines = {}
    for task, cls in variant.pipelines.items():
        if cls not in built:
            built[cls] = cls.from_pipe(base)
        pipelines[task] = built[cls]
    distinct = list(built.values())
    for pipeline in distinct:
        pipeline.set_progress_bar_config(disable=True)
        devices.apply_vae_options(pipeline, config)
        devices.place(pipeline, config.device)
    adapters = lora.open_adapters(base, family.adapters, config)  # before compiling: --compile needs its slots first
    attention.apply_backend(distinct, family.name, config)
    denoiser_cache = cache.apply_cache(distinct, family.name, config)  # its hooks too
    speed.apply_speed_options(distinct, config)
    return ImageRunner(family, variant_name, pipelines, adapters, denoiser_cache)


def registry_entries() -> dict[str, Family]:
    """One `Family` per image family row, for the registry in `pipelines/__init__.py`."""
    entries = {}
    for name, family in IMAGE_FAMILIES.items():
        variants = ", ".join(variant.title for variant in family.variants.values())

        def load_family(config: ServerConfig, family: ImageFamily = family) -> ImageRunner:
            return load(config, family)

        entries[name] = Family(name, variants, load=load_family)
    return entries
