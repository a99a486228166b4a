"""Request rules beyond one field: task inference, the fields each task and family reads, output sizes."""

from __future__ import annotations

import math

from ..errors import RequestError
from .request import (
    DEFAULT_STRENGTH,
    FAMILY_FIELDS,
    FAMILY_TITLES,
    INPUT_FIELDS,
    LIST_TASKS,
    MIN_SIDE,
    QUALITY_FORMATS,
    TASK_DEFAULT_STRENGTH,
    TASK_INPUTS,
    TASK_OUTPUT_FORMATS,
    VIDEO_AREAS,
    VIDEO_COUNTERPARTS,
    VIDEO_FIELDS,
    VIDEO_TASKS,
    GenerationRequest,
    Limits,
    fill,
    shown,
)


def given_input(request: GenerationRequest, name: str) -> str | None:
    """The field that carries input `name` ('image', 'image_url' or 'images'), None when absent; two is a 400."""
    fields = INPUT_FIELDS[name]
    present = [field for field in fields if getattr(request, field) is not None]
    if len(present) > 1:
        raise RequestError(present[0], f"give one of {', '.join(fields)}, not both {present[0]} and {present[1]}")
    return present[0] if present else None


def _check_kind_fields(request: GenerationRequest, task: str) -> None:
    given = request.model_fields_set
    if task in VIDEO_TASKS:
        for name, video_name in VIDEO_COUNTERPARTS.items():
            if name in given:
                raise RequestError(name, f"does not apply to {task} (use {video_name}), got {getattr(request, name)}")
        if task == "text2video" and "video_resolution" in given:
            raise RequestError(
                "video_resolution",
                f"applies to img2video only (text2video takes video_width and video_height), "
                f"got {request.video_resolution!r}",
            )
        return
    for name in VIDEO_FIELDS:
        if name in given:
            raise RequestError(
                name,
                f'applies to text2video and img2video only (send "task_type": "text2video" or "img2video"), '
                f"got {shown(getattr(request, name))}",
            )


def _inferred_task(request: GenerationRequest, default_task: str, served: tuple[str, ...]) -> str:
    """The task of a request that names none: image + mask -> inpaint; image -> img2img, or img2video on a
    server without img2img or when video fields are given; else the server's default."""
    image, mask = given_input(request, "image"), given_input(request, "mask")
    if mask and not image:
        raise RequestError(mask, "given without an image: inpainting needs image or image_url as well")
    if mask:
        return "inpaint"
    if not image:
        return default_task
    if image == "images" or ("edit" in served and "img2img" not in served):
        return "edit"  # several pictures, or a picture for a model that edits by instruction
    wants_video = bool(request.model_fields_set & set(VIDEO_FIELDS))
    if "img2video" in served and ("img2img" not in served or wants_video):
        return "img2video"
    return "img2img"


def resolve_task(request: GenerationRequest, default_task: str, served: tuple[str, ...]) -> GenerationRequest:
    """The request with its task (explicit, else inferred from its inputs) and task defaults filled in;
    a task outside `served` (what this server's models can do) is a 400."""
    task = request.task_type or _inferred_task(request, default_task, served)
    if task not in served:
        if request.task_type is None:  # inferred from an input image the server's models cannot read
            field = given_input(request, "mask") or given_input(request, "image") or "task_type"
            raise RequestError(
                field, f"asks for {task}, which this server does not serve (it serves {', '.join(served)})"
            )
        raise RequestError("task_type", f"this server serves {', '.join(served)}, got {task!r}")
    for name in TASK_INPUTS[task]:
        field = given_input(request, name)
        if field is None:
            also = " or images" if task in LIST_TASKS else ""
            raise RequestError(name, f"task_type {task} needs {name} or {INPUT_FIELDS[name][1]}{also}")
        if field == "images" and task not in LIST_TASKS:
            raise RequestError(
                "images", f"several pictures are for task_type edit; {task} takes one picture in image or image_url"
            )
    if request.images is not None and not TASK_INPUTS[task]:
        raise RequestError("images", f"task_type {task} reads no input picture, got {len(request.images)}")
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
            titles = [FAMILY_TITLES[f] for f in families]
            applies = " and ".join(titles) if len(titles) < 3 else f"{', '.join(titles[:-1])} and {titles[-1]}"
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


def _follow_picture(
    source: tuple[int, int], request: GenerationRequest, names: tuple[str, str], limits: Limits, multiple: int
) -> tuple[int, int]:
    """(width, height) when the request gives one of the sides `names` (width's, height's): the other keeps
    the picture's aspect ratio, and is checked with a message that says so."""
    source_width, source_height = source
    width_name, height_name = names
    how = f"follows the input image's {source_width}x{source_height} aspect ratio, so "
    if width_name in request.model_fields_set:
        width = getattr(request, width_name)
        height = _scaled(width, source_height / source_width, multiple)
        check_side(height_name, height, limits, multiple, how)
    else:
        height = getattr(request, height_name)
        width = _scaled(height, source_width / source_height, multiple)
        check_side(width_name, width, limits, multiple, how)
    return width, height


def output_size(source: tuple[int, int], request: GenerationRequest, limits: Limits, multiple: int) -> tuple[int, int]:
    """(width, height) for an input of size `source`: explicit sides win, a missing one keeps the aspect ratio,
    with none the input's own size is used, scaled down to the limits and rounded down to `multiple`."""
    source_width, source_height = source
    explicit = request.model_fields_set
    if "width" in explicit and "height" in explicit:
        return request.width, request.height
    if "width" in explicit or "height" in explicit:
        width, height = _follow_picture(source, request, ("width", "height"), limits, multiple)
        check_pixels(
            width, height, limits, f"follows the input image's {source_width}x{source_height} aspect ratio, so "
        )
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


def check_video_volume(request: GenerationRequest, limits: Limits) -> None:
    """Raise RequestError when num_frames x video_width x video_height is over --max_video_pixels."""
    volume = request.num_frames * request.video_width * request.video_height
    if volume > limits.max_video_pixels:
        raise RequestError(
            "num_frames",
            f"num_frames x video_width x video_height must be at most {limits.max_video_pixels}, got "
            f"{request.num_frames} x {request.video_width} x {request.video_height} = {volume}",
        )


def video_output_size(
    source: tuple[int, int], request: GenerationRequest, limits: Limits, multiple: int
) -> tuple[int, int]:
    """(video_width, video_height) of img2video from a picture of size `source`: explicit sides win, a
    missing one keeps the aspect ratio; with none, the picture's aspect ratio at the `video_resolution` area
    (as Wan's authors size it), rounded down to `multiple`."""
    source_width, source_height = source
    explicit = request.model_fields_set & {"video_width", "video_height"}
    if len(explicit) == 2:
        return request.video_width, request.video_height
    if explicit:
        return _follow_picture(source, request, ("video_width", "video_height"), limits, multiple)
    assert request.video_resolution is not None, "the runner fills in the variant's video_resolution"
    area = VIDEO_AREAS[request.video_resolution]
    aspect = source_height / source_width
    height = max(multiple, round(math.sqrt(area * aspect)) // multiple * multiple)
    width = max(multiple, round(math.sqrt(area / aspect)) // multiple * multiple)
    how = f"follows the input image's {source_width}x{source_height} aspect ratio at {request.video_resolution}, so "
    check_side("video_width", width, limits, multiple, how)
    check_side("video_height", height, limits, multiple, how)
    return width, height
