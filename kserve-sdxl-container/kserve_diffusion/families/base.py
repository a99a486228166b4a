"""What every model family provides to the server."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from diffusers import DiffusionPipeline
from PIL.Image import Image

from ..config import ServerConfig
from ..control import RequestControl
from ..inputs import NO_INPUTS, InputImages
from ..media import Video
from ..schedulers import SchedulerFactory
from ..schemas import GenerationRequest, Limits


def step_hooks(control: RequestControl | None) -> dict[str, Any]:
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
    size_multiple: int  # output width and height must be multiples of this
    schedulers: Mapping[str, SchedulerFactory]

    def check(self, request: GenerationRequest, limits: Limits) -> GenerationRequest:
        """Apply family rules; return the request with its task resolved, or raise RequestError."""
        ...

    def generate(
        self,
        request: GenerationRequest,
        seed: int,
        inputs: InputImages = NO_INPUTS,
        control: RequestControl | None = None,
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
