"""What the served model can do, for clients that build a form from it (the playground page): tasks, each
task's defaults, ranges and output formats, schedulers, limits, LoRA adapters and the marks outputs carry.

Nothing here is declared a second time: defaults come from the family's own check of a probe request, ranges
from the request schema's bounds and the server's limits, schedulers from the families' registries."""

from __future__ import annotations

from typing import Any

import annotated_types

from ..api.inputs import MAX_EDIT_IMAGES
from ..api.request import (
    LIST_TASKS,
    MAX_PROMPT_CHARS,
    MAX_SEED,
    MIN_SIDE,
    TASK_INPUTS,
    TASK_OUTPUT_FORMATS,
    VIDEO_TASKS,
    GenerationRequest,
    Limits,
    parse_request,
)
from ..errors import RequestError
from ..pipelines.base import Runner
from ..pipelines.schedulers import FAMILY_SCHEDULERS
from .service import GenerationService

# A placeholder picture for the probes: a family's check reads that a picture is given, not its pixels.
PROBE_PICTURE = "data:image/png;base64,iVBORw0KGgo="
# The fields a form offers, in the order it shows them; a task lists those it reads.
IMAGE_FORM_FIELDS = (
    "num_inference_steps",
    "guidance_scale",
    "true_cfg_scale",
    "scheduler",
    "width",
    "height",
    "strength",
    "num_images",
)
VIDEO_FORM_FIELDS = ("num_inference_steps", "video_guidance_scale", "scheduler", "video_width", "video_height")
VIDEO_ONLY = ("num_frames", "fps")
COMMON_FORM_FIELDS = ("output_format", "quality", "seed")
STRENGTH_TASKS = ("img2img", "inpaint")  # the tasks that read `strength` (edit ignores it)
CHOICE_FIELDS = ("scheduler", "output_format")  # chosen from a list, not a range
SIDES = ("width", "height", "video_width", "video_height")


def _bounds(name: str) -> dict[str, Any]:
    """A field's bounds as the request schema declares them."""
    found: dict[str, Any] = {}
    for rule in GenerationRequest.model_fields[name].metadata:
        if isinstance(rule, annotated_types.Ge):
            found["min"] = rule.ge
        elif isinstance(rule, annotated_types.Gt):
            found |= {"min": rule.gt, "min_exclusive": True}
        elif isinstance(rule, annotated_types.Le | annotated_types.Lt):
            found["max"] = rule.le if isinstance(rule, annotated_types.Le) else rule.lt
    return found


def field_range(name: str, limits: Limits, size_multiple: int) -> dict[str, Any]:
    """The values `name` accepts on this server: the schema's bounds, tightened by the operator's limits."""
    if name in SIDES:
        return {"min": max(MIN_SIDE, size_multiple), "max": limits.max_side, "step": size_multiple}
    found: dict[str, Any] = _bounds(name)
    operator_limits = {
        "num_inference_steps": limits.max_steps,
        "num_images": limits.max_num_images,
        "num_frames": limits.max_frames,
        "seed": MAX_SEED,
    }
    if name in operator_limits:
        found["max"] = operator_limits[name]
    annotation = GenerationRequest.model_fields[name].annotation
    if annotation in (int, int | None):
        found["step"] = 1
    return found


def _candidate_fields(task: str) -> tuple[str, ...]:
    if task in VIDEO_TASKS:
        return VIDEO_FORM_FIELDS + VIDEO_ONLY + COMMON_FORM_FIELDS
    shown = IMAGE_FORM_FIELDS if task in STRENGTH_TASKS else tuple(f for f in IMAGE_FORM_FIELDS if f != "strength")
    return shown + COMMON_FORM_FIELDS


def _reads(runner: Runner, probe: dict[str, Any], name: str, value: Any, limits: Limits) -> bool:
    """Whether the family reads `name`: its own check refuses a field it would ignore, naming that field."""
    if value is None or name in COMMON_FORM_FIELDS:
        return True
    try:
        runner.check(parse_request({**probe, name: value}, limits), limits)
    except RequestError as exc:
        return not str(exc).startswith(f"{name}:")
    return True


def _probe_value(request: GenerationRequest, name: str, limits: Limits, multiple: int) -> Any:
    """A value of `name` the family would take if it reads the field: its default, else the range's low end."""
    value = getattr(request, name, None)
    if value is not None or name in CHOICE_FIELDS:
        return value
    low = field_range(name, limits, multiple).get("min")
    return None if low is None else float(low) if GenerationRequest.model_fields[name].annotation is not int else low


def _task(service: GenerationService, task: str) -> dict[str, Any]:
    assert service.runner is not None
    runner, limits = service.runner, service.limits
    probe: dict[str, Any] = {"prompt": "probe", "task_type": task}
    for name in TASK_INPUTS[task]:
        probe[name] = PROBE_PICTURE
    described: dict[str, Any] = {
        "video": task in VIDEO_TASKS,
        "inputs": list(TASK_INPUTS[task]),
        "output_formats": list(TASK_OUTPUT_FORMATS[task]),
        "max_input_images": MAX_EDIT_IMAGES if task in LIST_TASKS else 1,
    }
    try:
        request = runner.check(parse_request(probe, limits), limits)
    except RequestError as exc:  # a task this probe cannot fill in: listed without defaults
        return {**described, "note": str(exc)}
    family = service.family_of(task)
    schedulers, _ = FAMILY_SCHEDULERS[family]
    multiple = runner.size_multiples[task]
    fields = [
        name
        for name in _candidate_fields(task)
        if _reads(runner, probe, name, _probe_value(request, name, limits, multiple), limits)
    ]
    return {
        "family": family,
        **described,
        "schedulers": list(schedulers),
        "fields": fields,
        # A task with an input picture takes its size from the picture unless sides are given: no default sides.
        "defaults": {
            name: getattr(request, name)
            for name in fields
            if getattr(request, name, None) is not None and not (TASK_INPUTS[task] and name in SIDES)
        },
        "ranges": {name: field_range(name, limits, multiple) for name in fields if name not in CHOICE_FIELDS},
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
            "max_video_pixels": limits.max_video_pixels,
            "max_loras_per_request": limits.max_loras_per_request,
            "max_prompt_chars": MAX_PROMPT_CHARS,
        },
        "loras": service.loras(),
        "provenance": service.config.provenance,
        "response_formats": ["b64_json", "url"] if service.outputs is not None else ["b64_json"],
    }
