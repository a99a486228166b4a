"""Request rules beyond one field: task inference, the fields each task and family reads, output sizes."""

from __future__ import annotations

import math

from ..errors import RequestError
from .request import (
    DEFAULT_STRENGTH,
    FAMILY_FIELDS,
    FAMILY_TITLES,
    INPUT_FIELDS,
    MIN_SIDE,
    QUALITY_FORMATS,
    TASK_DEFAULT_STRENGTH,
    TASK_INPUTS,
    TASK_OUTPUT_FORMATS,
    VIDEO_COUNTERPARTS,
    VIDEO_FIELDS,
    GenerationRequest,
    Limits,
    fill,
    shown,
)


def given_input(request: GenerationRequest, name: str) -> str | None:
    """The field that carries input `name` ('image' or 'image_url'), None when absent; both is a 400."""
    inline, url = INPUT_FIELDS[name]
    present = [field for field in (inline, url) if getattr(request, field) is not None]
    if len(present) == 2:
        raise RequestError(inline, f"give either {inline} or {url}, not both")
    return present[0] if present else None


def _check_kind_fields(request: GenerationRequest, task: str) -> None:
    given = request.model_fields_set
    if task == "text2video":
        for name, video_name in VIDEO_COUNTERPARTS.items():
            if name in given:
                raise RequestError(
                    name, f"does not apply to text2video (use {video_name}), got {getattr(request, name)}"
                )
        return
    for name in VIDEO_FIELDS:
        if name in given:
            raise RequestError(
                name, f'applies to text2video only (send "task_type": "text2video"), got {getattr(request, name)}'
            )


def resolve_task(request: GenerationRequest, default_task: str, served: tuple[str, ...]) -> GenerationRequest:
    """The request with its task (explicit, else inferred from its inputs) and task defaults filled in;
    a task outside `served` (what this server's models can do) is a 400."""
    image, mask = given_input(request, "image"), given_input(request, "mask")
    task = request.task_type
    if task is None:
        if mask and not image:
            raise RequestError(mask, "given without an image: inpainting needs image or image_url as well")
        task = "inpaint" if mask else "img2img" if image else default_task
    if task not in served:
        raise RequestError("task_type", f"this server serves {', '.join(served)}, got {task!r}")
    for name in TASK_INPUTS[task]:
        if given_input(request, name) is None:
            raise RequestError(name, f"task_type {task} needs {name} or {INPUT_FIELDS[name][1]}")
    _check_kind_fields(request, task)
    strength = request.strength
    if strength is None:
        strength = TASK_DEFAULT_STRENGTH.get(task, DEFAULT_STRENGTH)
    formats = TASK_OUTPUT_FORMATS[task]
    output_format = request.output_format or formats[0]
    if output_format not in formats:
        raise RequestError("output_format", f"{task} answers with {', '.join(formats)}, got {output_format!r}")
    if request.quality is not None and output_format not in QUALITY_FORMATS:
        raise RequestError(
            "quality", f"applies to jpeg and webp output only, not {output_format}, got {request.quality}"
        )
    return fill(request, task_type=task, strength=strength, output_format=output_format)


def check_family_fields(request: GenerationRequest, family: str) -> None:
    """Raise RequestError for a field `family` does not read (see FAMILY_FIELDS)."""
    for name, families in FAMILY_FIELDS.items():
        value = getattr(request, name)
        if family not in families and name in request.model_fields_set and value is not None:
            applies = " and ".join(FAMILY_TITLES[f] for f in families)
            raise RequestError(name, f"applies to {applies} only, not {FAMILY_TITLES[family]}, got {shown(value)}")


def check_image_size(request: GenerationRequest, limits: Limits, multiple: int) -> None:
    """Check width/height of an image request; image tasks take a missing side from the input (checked later)."""
    sides = {"width", "height"}
    given = sides if request.task_type == "text2img" else sides & request.model_fields_set
    for side in sorted(given):
        check_side(side, getattr(request, side), limits, multiple)
    if len(given) == 2:
        check_pixels(request.width, request.height, limits)


def check_side(name: str, value: int, limits: Limits, multiple: int, how: str = "") -> None:
    """Raise RequestError unless `value` is a servable width/height; `how` explains a derived side."""
    if not MIN_SIDE <= value <= limits.max_side:
        raise RequestError(name, f"{how}must be between {MIN_SIDE} and {limits.max_side}, got {value}")
    if value % multiple:
        lower = value - value % multiple
        examples = f"e.g. {lower} or {lower + multiple}"
        raise RequestError(name, f"{how}must be a multiple of {multiple} ({examples}), got {value}")


def check_pixels(width: int, height: int, limits: Limits, how: str = "") -> None:
    """Raise RequestError when width x height is over the pixel limit."""
    if width * height > limits.max_pixels:
        raise RequestError(
            "height",
            f"{how}height x width must be at most {limits.max_pixels} pixels, "
            f"got {height} x {width} = {width * height}",
        )


def _scaled(side: int, ratio: float, multiple: int) -> int:
    return max(multiple, round(side * ratio / multiple) * multiple)


def output_size(source: tuple[int, int], request: GenerationRequest, limits: Limits, multiple: int) -> tuple[int, int]:
    """(width, height) for an input of size `source`: explicit sides win, a missing one keeps the aspect ratio,
    with none the input's own size is used, scaled down to the limits and rounded down to `multiple`."""
    source_width, source_height = source
    explicit = request.model_fields_set
    if "width" in explicit and "height" in explicit:
        return request.width, request.height
    if "width" in explicit or "height" in explicit:
        how = f"follows the input image's {source_width}x{source_height} aspect ratio, so "
        if "width" in explicit:
            width, height = request.width, _scaled(request.width, source_height / source_width, multiple)
            check_side("height", height, limits, multiple, how)
        else:
            width, height = _scaled(request.height, source_width / source_height, multiple), request.height
            check_side("width", width, limits, multiple, how)
        check_pixels(width, height, limits, how)
        return width, height
    scale = min(
        1.0,
        limits.max_side / max(source_width, source_height),
        math.sqrt(limits.max_pixels / (source_width * source_height)),
    )
    width = int(source_width * scale) // multiple * multiple
    height = int(source_height * scale) // multiple * multiple
    if min(width, height) < MIN_SIDE:
        raise RequestError(
            "image",
            f"is {source_width}x{source_height}, too small for an output of at least {MIN_SIDE}x{MIN_SIDE} pixels: "
            f"give width and height to scale it up",
        )
    return width, height
