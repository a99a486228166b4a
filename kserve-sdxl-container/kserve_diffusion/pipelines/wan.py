"""Wan video: text-to-video and image-to-video for every variant of `wan_variants.py`, VAE in float32, UniPC."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from diffusers import DiffusionPipeline, UniPCMultistepScheduler, WanImageToVideoPipeline, WanPipeline

from ..api.inputs import NO_INPUTS, InputImages
from ..api.request import GenerationRequest, Limits, fill, with_defaults
from ..api.rules import check_family_fields, check_side, check_video_volume, resolve_task
from ..config import ServerConfig
from ..errors import ConfigError, RequestError
from ..media import Video
from . import attention, cache, devices, lora, quantize, speed
from .base import DecodeOutOfMemory, StepObserver, with_scheduler
from .loading import load_pretrained, pipeline_index
from .schedulers import WAN_SCHEDULERS, SchedulerFactory, build_scheduler, scheduler_name
from .wan_variants import VARIANTS, WanVariant, detect_variant

logger = logging.getLogger("kserve.diffusion")

FRAME_STEP = 4  # the VAE compresses time by 4: num_frames = 4k + 1
# Wan2.1's flow_shift advice: 3.0 suits 480p, 5.0 suits 720p (variants with their own value override it).
FLOW_SHIFT_480P, FLOW_SHIFT_720P, SHORT_SIDE_720P = 3.0, 5.0, 720
# The negative prompt Wan's authors recommend (in Chinese, as trained): garish colours, overexposure,
# static, blurry details, subtitles, worst/low quality, JPEG artefacts, deformed hands and faces,
# fused fingers, motionless frames, cluttered background, three legs, crowds, walking backwards.
WAN_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，"
    "JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，"
    "手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
)


def frame_count_problem(num_frames: int) -> str | None:
    """Why `num_frames` is not 4k+1, naming the nearest valid counts; None when it is."""
    extra = (num_frames - 1) % FRAME_STEP
    if extra == 0:
        return None
    lower = num_frames - extra
    nearest = f"{lower} or {lower + FRAME_STEP}" if lower >= 1 else str(lower + FRAME_STEP)
    return f"Wan needs 4k+1 frames (1, 5, 9, ..., 81): the nearest valid counts are {nearest}, got {num_frames}"


# The pipeline classes a Wan folder's model_index.json may name; the other task's pipeline shares its modules.
PIPELINE_CLASSES: dict[str, type[DiffusionPipeline]] = {
    "WanPipeline": WanPipeline,
    "WanImageToVideoPipeline": WanImageToVideoPipeline,
}


class _StepCount:
    """Counts finished denoising steps (then asks `control`): an out-of-memory error after the last one
    happened in the VAE decode."""

    def __init__(self, control: StepObserver | None):
        self.control = control
        self.done = 0

    def on_step(self, pipeline: Any, step: int, timestep: Any, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
        self.done += 1
        if self.control is None:
            return callback_kwargs
        return self.control.on_step(pipeline, step, timestep, callback_kwargs)


class WanRunner:
    """A loaded Wan model: its variant's tasks, each on a pipeline sharing the same modules."""

    family = "wan"
    schedulers: Mapping[str, SchedulerFactory] = WAN_SCHEDULERS

    def __init__(
        self,
        pipelines: dict[str, DiffusionPipeline],
        variant: str,
        flow_shift: float | None,
        adapters: lora.LoraAdapters | None = None,
        denoiser_cache: cache.DenoiserCache | None = None,
    ):
        self.pipelines = pipelines
        self.variant_name = variant
        self.variant: WanVariant = VARIANTS[variant]
        self.tasks = self.variant.tasks
        self.default_task = self.tasks[0]
        self.size_multiples = dict.fromkeys(self.tasks, self.variant.size_multiple)
        self.flow_shift = flow_shift
        self.adapters = adapters
        self.cache = denoiser_cache

    @property
    def pipeline(self) -> DiffusionPipeline:
        """The pipeline of the default task (every task's pipeline shares its modules)."""
        return self.pipelines[self.default_task]

    def use_loras(self, request: GenerationRequest) -> lora.Activation | None:
        """Activate the request's adapters (accelerator thread)."""
        return lora.activate(self.adapters, request)

    def _defaults(self, task: str) -> dict[str, Any]:
        variant = self.variant
        defaults: dict[str, Any] = {
            "num_inference_steps": variant.steps,
            "num_frames": variant.num_frames,
            "fps": variant.fps,
            "video_guidance_scale": variant.guidance_scale,
            "video_guidance_scale_2": variant.guidance_scale_2,
        }
        if task == "text2video":
            defaults.update(video_width=variant.video_width, video_height=variant.video_height)
        else:
            defaults["video_resolution"] = variant.video_resolution
        return defaults

    def check(self, request: GenerationRequest, limits: Limits) -> GenerationRequest:
        """Wan rules: the variant's tasks, sizes in its multiple, 4k+1 frames, frames x pixels within the limit;
        fields the request leaves out get the variant's defaults."""
        request = resolve_task(request, self.default_task, self.tasks)
        task = request.task_type or ""
        given = request.model_fields_set
        if self.variant.guidance_scale_2 is None and "video_guidance_scale_2" in given:
            raise RequestError(
                "video_guidance_scale_2",
                f"applies to the Wan2.2 A14B models (two experts) only, not {self.variant.title}, "
                f"got {request.video_guidance_scale_2}",
            )
        check_family_fields(request, self.family)
        if request.num_images != 1:
            raise RequestError("num_images", f"{task} makes one video per request, got {request.num_images}")
        request = with_defaults(request, limits, **self._defaults(task))
        multiple = self.variant.size_multiple
        sides = {"video_height", "video_width"}
        for side in sorted(sides if task == "text2video" else sides & given):
            check_side(side, getattr(request, side), limits, multiple)
        problem = frame_count_problem(request.num_frames)
        if problem:
            raise RequestError("num_frames", problem)
        if task == "text2video":  # img2video's size follows the picture: checked once it is known
            check_video_volume(request, limits)
        lora.check(self.adapters, request)
        return fill(request, scheduler=scheduler_name(self.family, request.scheduler))

    def shift_for(self, request: GenerationRequest) -> float:
        """The flow shift: --flow_shift, else the variant's, else 3.0 for 480p and 5.0 from 720p up."""
        if self.flow_shift is not None:
            return self.flow_shift
        if self.variant.flow_shift is not None:
            return self.variant.flow_shift
        return FLOW_SHIFT_720P if min(request.video_height, request.video_width) >= SHORT_SIDE_720P else FLOW_SHIFT_480P

    def generate(
        self,
        request: GenerationRequest,
        seed: int,
        inputs: InputImages = NO_INPUTS,
        control: StepObserver | None = None,
    ) -> Video:
        """One video on the calling (accelerator) thread; frames as uint8."""
        task = request.task_type or self.default_task
        shared = self.pipelines[task]
        config = {**shared.scheduler.config, "flow_shift": self.shift_for(request)}
        pipeline = with_scheduler(shared, build_scheduler(self.schedulers, request.scheduler, config))
        extra: dict[str, Any] = {}
        if task == "img2video":
            extra["image"] = inputs.image
        if self.variant.guidance_scale_2 is not None:
            extra["guidance_scale_2"] = request.video_guidance_scale_2
        steps = _StepCount(control)
        try:
            with cache.counted(self.cache, request.num_inference_steps or 1, control):
                frames = pipeline(
                    prompt=request.prompt,
                    negative_prompt=request.negative_prompt
                    if request.negative_prompt is not None
                    else WAN_NEGATIVE_PROMPT,
                    height=request.video_height,
                    width=request.video_width,
                    num_frames=request.num_frames,
                    guidance_scale=request.video_guidance_scale,
                    num_inference_steps=request.num_inference_steps,
                    generator=torch.Generator("cpu").manual_seed(seed),
                    output_type="np",
                    callback_on_step_end=steps.on_step,
                    **extra,
                ).frames[0]
        except torch.OutOfMemoryError as exc:
            if steps.done >= (request.num_inference_steps or 0) and not isinstance(exc, DecodeOutOfMemory):
                raise DecodeOutOfMemory(str(exc).splitlines()[0] if str(exc) else "out of memory") from exc
            raise
        return Video(np.clip(np.rint(frames * 255), 0, 255).astype(np.uint8), request.fps)


def load(config: ServerConfig, model_id: str | None = None, flag: str = "--model_id") -> WanRunner:
    """Load a Wan folder (default --model_id) with the pipeline class its model_index.json names: the
    transformer(s) and encoders in the configured dtype, the VAE in float32 (the model cards' advice), UniPC
    for flow prediction."""
    devices.check_device(config.device)
    model_id = model_id or config.model_id
    dtype = devices.DTYPES[config.video_dtype if flag == "--video_model_id" else config.dtype]
    index = pipeline_index(model_id, flag, token=config.hf_token)
    class_name = str(index.get("_class_name", ""))
    cls = PIPELINE_CLASSES.get(class_name)
    if cls is None:
        raise ConfigError(f"{flag}: {model_id} is a {class_name}, not a Wan text- or image-to-video pipeline")
    dtypes = {"default": dtype, "vae": torch.float32}
    quantization = quantize.quantization_config(config, "wan", model_id, flag, index)
    pipeline = load_pretrained(
        cls, model_id, flag, dtype=dtypes, token=config.hf_token, quantization_config=quantization
    )
    if not isinstance(pipeline.scheduler, UniPCMultistepScheduler):
        pipeline.scheduler = UniPCMultistepScheduler.from_config(
            pipeline.scheduler.config, prediction_type="flow_prediction", use_flow_sigmas=True
        )
    return assemble(pipeline, config)


def task_pipelines(pipeline: DiffusionPipeline, variant: str) -> dict[str, DiffusionPipeline]:
    """The pipeline of each task of `variant`: TI2V-5B's image-to-video one shares the loaded modules."""
    tasks = VARIANTS[variant].tasks
    if tasks == ("text2video", "img2video"):
        image_to_video = WanImageToVideoPipeline(
            tokenizer=pipeline.tokenizer,
            text_encoder=pipeline.text_encoder,
            vae=pipeline.vae,
            scheduler=pipeline.scheduler,
            transformer=pipeline.transformer,
            transformer_2=None,
            expand_timesteps=True,
        )
        image_to_video.set_progress_bar_config(disable=True)
        return {"text2video": pipeline, "img2video": image_to_video}
    return {tasks[0]: pipeline}


def assemble(pipeline: DiffusionPipeline, config: ServerConfig) -> WanRunner:
    """The runner for a loaded Wan pipeline, placed on the device, with the speed options applied."""
    variant, why = detect_variant(pipeline)
    boundary = pipeline.config.get("boundary_ratio")
    logger.info(
        "serving %s (%s: %s)%s",
        VARIANTS[variant].title,
        variant,
        why,
        f"; experts switch at boundary_ratio {boundary}" if boundary is not None else "",
    )
    pipeline.set_progress_bar_config(disable=True)
    devices.apply_vae_options(pipeline, config)
    devices.place(pipeline, config.device)
    pipelines = task_pipelines(pipeline, variant)
    adapters = lora.open_adapters(pipeline, "wan", config)  # before compiling: --compile needs its slots first
    attention.apply_backend(pipelines.values(), "wan", config)
    denoiser_cache = cache.apply_cache(pipelines.values(), "wan", config)  # its hooks too
    speed.apply_speed_options(pipelines.values(), config)
    return WanRunner(pipelines, variant, config.flow_shift, adapters, denoiser_cache)
