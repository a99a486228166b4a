"""One endpoint for two families: an image model and a Wan video model, routed by task_type (img2img and
img2video both read an input image: `resolve_task` infers which)."""

from __future__ import annotations

from PIL.Image import Image

from ..api.inputs import NO_INPUTS, InputImages
from ..api.request import GenerationRequest, Limits
from ..api.rules import resolve_task
from ..media import Video
from .base import Runner, StepObserver
from .lora import Activation


class CombinedRunner:
    """Serves the tasks of both runners; a request goes to the runner that serves its task."""

    def __init__(self, image: Runner, video: Runner):
        self.by_task: dict[str, Runner] = {task: runner for runner in (image, video) for task in runner.tasks}
        self.tasks = tuple(self.by_task)
        self.default_task = image.default_task
        self.size_multiples = {task: self.by_task[task].size_multiples[task] for task in self.tasks}

    def check(self, request: GenerationRequest, limits: Limits) -> GenerationRequest:
        """Resolve the task, then apply the rules of the family that serves it."""
        request = resolve_task(request, self.default_task, self.tasks)
        return self.by_task[request.task_type or ""].check(request, limits)

    def use_loras(self, request: GenerationRequest) -> Activation | None:
        """Activate the request's adapters in the runner that serves its task."""
        return self.by_task[request.task_type or ""].use_loras(request)

    def generate(
        self,
        request: GenerationRequest,
        seed: int,
        inputs: InputImages = NO_INPUTS,
        control: StepObserver | None = None,
    ) -> list[Image] | Video:
        """Generate with the runner that serves the request's task."""
        return self.by_task[request.task_type or ""].generate(request, seed, inputs, control)
