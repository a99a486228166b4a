"""Wan2.1 text-to-video: WanPipeline with its VAE in float32, UniPC with a flow shift per resolution."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from diffusers import UniPCMultistepScheduler, WanPipeline

from ..api.inputs import NO_INPUTS, InputImages
from ..api.request import GenerationRequest, Limits, fill, with_defaults
from ..api.rules import check_family_fields, check_side, resolve_task
from ..config import ServerConfig
from ..errors import RequestError
from ..media import Video
from . import devices, lora, speed
from .base import StepObserver, step_hooks, with_scheduler
from .loading import load_pretrained
from .schedulers import WAN_SCHEDULERS, SchedulerFactory, build_scheduler, scheduler_name

SIZE_MULTIPLE = 16  # VAE /8, then 2x2 patches
DEFAULT_STEPS = 25
FRAME_STEP = 4  # the VAE compresses time by 4: num_frames = 4k + 1
# flow_shift from the model card: 3.0 suits 480p, 5.0 suits 720p.
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


class WanRunner:
    """A loaded Wan2.1 text-to-video pipeline."""

    family = "wan"
    tasks = ("text2video",)
    default_task = "text2video"
    size_multiple = SIZE_MULTIPLE
    schedulers: Mapping[str, SchedulerFactory] = WAN_SCHEDULERS

    def __init__(self, pipeline: WanPipeline, flow_shift: float | None, adapters: lora.LoraAdapters | None = None):
        self.pipeline = pipeline
        self.flow_shift = flow_shift
        self.adapters = adapters

    def use_loras(self, request: GenerationRequest) -> lora.Activation | None:
        """Activate the request's adapters (accelerator thread)."""
        return lora.activate(self.adapters, request)

    def check(self, request: GenerationRequest, limits: Limits) -> GenerationRequest:
        """Wan rules: sizes in multiples of 16, 4k+1 frames, frames x pixels within the limit."""
        request = resolve_task(request, self.default_task, self.tasks)
        for side in ("video_height", "video_width"):
            check_side(side, getattr(request, side), limits, SIZE_MULTIPLE)
        problem = frame_count_problem(request.num_frames)
        if problem:
            raise RequestError("num_frames", problem)
        volume = request.num_frames * request.video_width * request.video_height
        if volume > limits.max_video_pixels:
            raise RequestError(
                "num_frames",
                f"num_frames x video_width x video_height must be at most {limits.max_video_pixels}, got "
                f"{request.num_frames} x {request.video_width} x {request.video_height} = {volume}",
            )
        check_family_fields(request, self.family)
        if request.num_images != 1:
            raise RequestError("num_images", f"text2video makes one video per request, got {request.num_images}")
        lora.check(self.adapters, request)
        request = with_defaults(request, limits, num_inference_steps=DEFAULT_STEPS)
        return fill(request, scheduler=scheduler_name(self.family, request.scheduler))

    def shift_for(self, request: GenerationRequest) -> float:
        """The flow shift: --flow_shift, else 3.0 for 480p and 5.0 from 720p up."""
        if self.flow_shift is not None:
            return self.flow_shift
        return FLOW_SHIFT_720P if min(request.video_height, request.video_width) >= SHORT_SIDE_720P else FLOW_SHIFT_480P

    def generate(
        self,
        request: GenerationRequest,
        seed: int,
        inputs: InputImages = NO_INPUTS,
        control: StepObserver | None = None,
    ) -> Video:
        """One video on the calling (accelerator) thread; frames as uint8."""
        config = {**self.pipeline.scheduler.config, "flow_shift": self.shift_for(request)}
        pipeline = with_scheduler(self.pipeline, build_scheduler(self.schedulers, request.scheduler, config))
        frames = pipeline(
            prompt=request.prompt,
            negative_prompt=request.negative_prompt if request.negative_prompt is not None else WAN_NEGATIVE_PROMPT,
            height=request.video_height,
            width=request.video_width,
            num_frames=request.num_frames,
            guidance_scale=request.video_guidance_scale,
            num_inference_steps=request.num_inference_steps,
            generator=torch.Generator("cpu").manual_seed(seed),
            output_type="np",
            **step_hooks(control),
        ).frames[0]
        return Video(np.clip(np.rint(frames * 255), 0, 255).astype(np.uint8), request.fps)


def load(config: ServerConfig, model_id: str | None = None, flag: str = "--model_id") -> WanRunner:
    """Load Wan from `model_id` (default --model_id): transformer and text encoder in the configured
    dtype, the VAE in float32 (the model card's advice), UniPC for flow prediction."""
    devices.check_device(config.device)
    dtype = devices.DTYPES[config.video_dtype if model_id else config.dtype]
    pipeline = load_pretrained(
        WanPipeline,
        model_id or config.model_id,
        flag,
        dtype={"default": dtype, "vae": torch.float32},
        token=config.hf_token,
    )
    if not isinstance(pipeline.scheduler, UniPCMultistepScheduler):
        pipeline.scheduler = UniPCMultistepScheduler.from_config(
            pipeline.scheduler.config, prediction_type="flow_prediction", use_flow_sigmas=True
        )
    return assemble(pipeline, config)


def assemble(pipeline: WanPipeline, config: ServerConfig) -> WanRunner:
    """The runner for a loaded Wan pipeline, placed on the device, with the speed options applied."""
    pipeline.set_progress_bar_config(disable=True)
    devices.apply_vae_options(pipeline, config)
    devices.place(pipeline, config.device)
    adapters = lora.open_adapters(pipeline, "wan", config)  # before compiling: --compile needs its slots first
    speed.apply_speed_options((pipeline,), config)
    return WanRunner(pipeline, config.flow_shift, adapters)
