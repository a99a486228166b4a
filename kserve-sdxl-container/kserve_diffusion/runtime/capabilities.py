"""What the served model can do, for clients that build a form from it (the playground page): tasks, each
task's defaults and output formats, schedulers, limits, LoRA adapters and the marks outputs carry."""

from __future__ import annotations

from typing import Any

from ..api.request import TASK_INPUTS, TASK_OUTPUT_FORMATS, VIDEO_FIELDS, VIDEO_TASKS, parse_request
from ..errors import RequestError
from ..pipelines.schedulers import FAMILY_SCHEDULERS
from .service import GenerationService

# A placeholder picture for the probes: a family's check reads that a picture is given, not its pixels.
_PICTURE = "data:image/png;base64,iVBORw0KGgo="
_DEFAULTED = (
    "num_inference_steps",
    "guidance_scale",
    "true_cfg_scale",
    "scheduler",
    "height",
    "width",
    "strength",
    "num_images",
    "output_format",
    "video_height",
    "video_width",
    "num_frames",
    "fps",
    "video_guidance_scale",
)


_BOTH = ("num_inference_steps", "scheduler", "output_format")  # read by image and video tasks alike
_STRENGTH_TASKS = ("img2img", "inpaint")


def _task(service: GenerationService, task: str) -> dict[str, Any]:
    assert service.runner is not None
    fields: dict[str, Any] = {"prompt": "probe", "task_type": task}
    for name in TASK_INPUTS[task]:
        fields[name] = _PICTURE
    try:
        request = service.runner.check(parse_request(fields, service.limits), service.limits)
    except RequestError as exc:  # a task this probe cannot fill in: listed without defaults
        return {"inputs": list(TASK_INPUTS[task]), "output_formats": list(TASK_OUTPUT_FORMATS[task]), "note": str(exc)}
    family = "wan" if task in VIDEO_TASKS and service.config.video_model_id else service.family.name
    schedulers = FAMILY_SCHEDULERS.get(family, FAMILY_SCHEDULERS.get("sdxl"))[0]
    video = task in VIDEO_TASKS
    read = [name for name in _DEFAULTED if (name in VIDEO_FIELDS) == video or name in _BOTH]
    if task not in _STRENGTH_TASKS:
        read.remove("strength") if "strength" in read else None
    defaults = {name: getattr(request, name) for name in read if getattr(request, name, None) is not None}
    return {
        "family": family,
        "video": task in VIDEO_TASKS,
        "inputs": list(TASK_INPUTS[task]),
        "output_formats": list(TASK_OUTPUT_FORMATS[task]),
        "schedulers": list(schedulers),
        "defaults": defaults,
    }


def describe(service: GenerationService) -> dict[str, Any]:
    """The served model's capabilities (tasks in the order the model prefers them)."""
    limits = service.limits
    return {
        "name": service.name,
        "family": service.family.name,
        "title": service.family.title,
        "tasks": {task: _task(service, task) for task in service.tasks()},
        "limits": {
            "max_steps": limits.max_steps,
            "max_side": limits.max_side,
            "max_pixels": limits.max_pixels,
            "max_num_images": limits.max_num_images,
            "max_frames": limits.max_frames,
            "max_loras_per_request": limits.max_loras_per_request,
        },
        "loras": service.loras(),
        "provenance": service.config.provenance,
        "response_formats": ["b64_json", "url"] if service.outputs is not None else ["b64_json"],
    }
