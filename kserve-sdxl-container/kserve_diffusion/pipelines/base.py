"""What every model family provides to the server."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from diffusers import DiffusionPipeline
from PIL.Image import Image

from ..api.inputs import NO_INPUTS, InputImages
from ..api.request import GenerationRequest, Limits
from ..config import ServerConfig
from ..media import Video
from .lora import Activation


class DecodeOutOfMemory(torch.OutOfMemoryError):
    """Out of memory in the VAE decode, after every denoising step (long or 720p videos): --vae_tiling helps."""


class StepObserver(Protocol):
    """Told of every denoising step (the runtime's RequestControl: progress, deadline, cancellation)."""

    def on_step(self, pipeline: Any, step: int, timestep: Any, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
        """diffusers' `callback_on_step_end`; may raise to stop the generation."""
        ...

    def cache_skipped(self, skipped: int, total: int) -> None:
        """Told after the pipeline call what --cache skipped: attention-layer evaluations, of `total`."""
        ...


def denoisers(pipelines: Iterable[DiffusionPipeline | None]) -> list[torch.nn.Module]:
    """The distinct UNets / transformers of `pipelines` (Wan2.2 A14B: both experts), in order."""
    found: dict[int, torch.nn.Module] = {}
    for pipeline in pipelines:
        for name in ("unet", "transformer", "transformer_2"):
            module = getattr(pipeline, name, None)
            if module is not None:
                found.setdefault(id(module), module)
    return list(found.values())


def step_hooks(control: StepObserver | None) -> dict[str, Any]:
    """Pipeline keyword arguments that let `control` count, log and stop the denoising loop at each step."""
    return {"callback_on_step_end": control.on_step} if control is not None else {}


def with_scheduler(pipeline: DiffusionPipeline, scheduler: Any) -> DiffusionPipeline:
    """A shallow copy of `pipeline` using `scheduler`; the shared pipeline is left untouched."""
    view = copy.copy(pipeline)
    view.scheduler = scheduler
    return view


class Runner(Protocol):
    """A loaded family: checks requests against what it can do, and generates."""

    tasks: tuple[str, ...]
    default_task: str  # the task of a request that names none and gives no input image
    size_multiples: Mapping[str, int]  # per task: output width and height must be multiples of this

    def check(self, request: GenerationRequest, limits: Limits) -> GenerationRequest:
        """Apply family rules; return the request with its task resolved, or raise RequestError."""
        ...

    def use_loras(self, request: GenerationRequest) -> Activation | None:
        """Make the request's LoRA adapters active, or none (accelerator thread); None without --lora_dir."""
        ...

    def generate(
        self,
        request: GenerationRequest,
        seed: int,
        inputs: InputImages = NO_INPUTS,
        control: StepObserver | None = None,
    ) -> list[Image] | Video:
        """Run the pipeline(s) on the calling (accelerator) thread: images, or one video; `control` is
        called at every denoising step (and may stop the generation there by raising)."""
        ...


@dataclass(frozen=True)
class Family:
    """A registry entry: a family's name, its title for logs, and how to load it."""

    name: str
    title: str
    load: Callable[[ServerConfig], Runner]
