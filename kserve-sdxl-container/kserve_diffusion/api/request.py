"""The request schema: one pydantic model that is validation, defaults and documentation at once.

Static ranges live in the field definitions; the operator's limits (--max_steps, ...) arrive as
the validation context. Every violation becomes one 400 message naming the field, what is allowed
and the value received.
It is one module because the fields, the tables of what each task and family reads, and the v2 kinds derived
from the fields are one description of a request.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import NoneType
from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from ..config import ServerConfig, defaults
from ..errors import RequestError, RequestErrors
from ..marks import marks_text, parse_marks
from .inputs import MAX_EDIT_IMAGES, read_images
from .loras import LoraChoice, read_loras
from .messages import describe_error, shown

TASK_TYPES = ("text2img", "img2img", "inpaint", "edit", "text2video", "img2video")
VIDEO_TASKS = ("text2video", "img2video")  # the tasks answered with a video
# The input images each task reads; each can arrive inline (`image`) or by URL (`image_url`).
TASK_INPUTS: dict[str, tuple[str, ...]] = {
    "text2img": (),
    "img2img": ("image",),
    "inpaint": ("image", "mask"),
    "edit": ("image",),  # one picture, or several in `images`
    "text2video": (),
    "img2video": ("image",),
}
# Each input's fields: inline, by URL, and (the pictures of an edit) a list.
INPUT_FIELDS = {"image": ("image", "image_url", "images"), "mask": ("mask", "mask_url")}
LIST_TASKS = ("edit",)  # the tasks that read `images`
# The files each kind of task can be answered with; the first is the default.
TASK_OUTPUT_FORMATS: dict[str, tuple[str, ...]] = {
    "text2img": ("png", "jpeg", "webp"),
    "img2img": ("png", "jpeg", "webp"),
    "inpaint": ("png", "jpeg", "webp"),
    "edit": ("png", "jpeg", "webp"),
    "text2video": ("mp4", "gif", "webp"),
    "img2video": ("mp4", "gif", "webp"),
}
QUALITY_FORMATS = ("jpeg", "webp")  # the lossy formats `quality` applies to
# Fields only video uses, and image fields with a video counterpart: given for the other kind of task
# they would be silently ignored, so they are a 400 that points to the right field.
VIDEO_FIELDS = (
    "video_height",
    "video_width",
    "num_frames",
    "video_guidance_scale",
    "video_guidance_scale_2",
    "fps",
    "video_resolution",
)
# Video areas by name: img2video keeps the input picture's aspect ratio at about this many pixels.
VIDEO_AREAS = {"480p": 832 * 480, "720p": 1280 * 720}
VIDEO_COUNTERPARTS = {"height": "video_height", "width": "video_width", "guidance_scale": "video_guidance_scale"}
DEFAULT_STRENGTH = 0.3  # seed 000's default: a light refinement
TASK_DEFAULT_STRENGTH = {"inpaint": 1.0}  # inpainting repaints the masked area from scratch
MAX_PROMPT_CHARS = 10_000
MAX_SEED = 2**63 - 1  # fits the v2 INT64 tensor the seed is echoed in
MIN_SIDE = 64
MAX_T5_TOKENS = 512  # the most prompt tokens the FLUX, FLUX.2, Qwen-Image and Z-Image pipelines read
# Fields only some families read: field -> those families. Sent to another family they would be
# silently ignored, so they are a 400 naming the families they apply to.
FAMILY_FIELDS: dict[str, tuple[str, ...]] = {
    "prompt_2": ("sdxl", "flux", "flux_kontext"),
    "use_refiner": ("sdxl",),
    "high_noise_frac": ("sdxl",),
    "refiner_inference_steps": ("sdxl",),
    "true_cfg_scale": ("flux", "flux_kontext", "qwen_image", "qwen_image_edit"),
    "max_sequence_length": ("flux", "flux_kontext", "qwen_image", "qwen_image_edit", "flux2", "z_image"),
}
FAMILY_TITLES = {
    "sdxl": "SDXL",
    "flux": "FLUX",
    "wan": "Wan video",
    "qwen_image": "Qwen-Image",
    "qwen_image_edit": "Qwen-Image-Edit",
    "flux2": "FLUX.2",
    "z_image": "Z-Image",
    "flux_kontext": "FLUX.1 Kontext",
}


@dataclass(frozen=True)
class Limits:
    """Per-server request limits; built from the ServerConfig (the settings hold the defaults)."""

    max_num_images: int
    max_steps: int
    max_side: int
    max_pixels: int
    max_frames: int
    max_video_pixels: int
    request_timeout: float
    max_loras_per_request: int
    provenance: str  # the server's marks: a request may ask for these or (allowed) fewer
    allow_unmarked_requests: bool

    @classmethod
    def from_config(cls, config: ServerConfig) -> Limits:
        """The limits a ServerConfig sets."""
        return cls(**{name: getattr(config, name) for name in cls.__dataclass_fields__})


DEFAULT_LIMITS = Limits.from_config(defaults())


# Fields whose upper bound is the operator's: field -> Limits attribute.
_SERVER_LIMITED = {
    "num_inference_steps": "max_steps",
    "refiner_inference_steps": "max_steps",
    "num_images": "max_num_images",
    "num_frames": "max_frames",
}


def _limits(info: ValidationInfo) -> Limits:
    return info.context if isinstance(info.context, Limits) else DEFAULT_LIMITS


class GenerationRequest(BaseModel):
    """One generation: the parameters of seed 000's API, with its defaults."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, validate_default=True)

    task_type: Literal["text2img", "img2img", "inpaint", "edit", "text2video", "img2video"] | None = Field(
        None, description="what to generate; inferred when absent"
    )
    prompt: Annotated[str, Field(min_length=1, max_length=MAX_PROMPT_CHARS, description="what to draw")]
    prompt_2: str | None = Field(
        None,
        min_length=1,
        max_length=MAX_PROMPT_CHARS,
        description="prompt for the second text encoder (SDXL's OpenCLIP, FLUX's T5); defaults to prompt",
    )
    negative_prompt: str | None = Field(None, max_length=MAX_PROMPT_CHARS, description="what to avoid")
    image_url: str | None = Field(
        None, min_length=1, repr=False, description="input image for img2img/inpaint: an http(s) or data URL"
    )
    image: str | bytes | None = Field(
        None, min_length=1, repr=False, description="input image inline: base64 or a data URL (v2: the file bytes)"
    )
    images: tuple[str | bytes, ...] | None = Field(
        None,
        repr=False,
        json_schema_extra={"minItems": 1, "maxItems": MAX_EDIT_IMAGES},  # read_images checks them, with our words
        description=f"edit: up to {MAX_EDIT_IMAGES} pictures (the family's limit), each base64, a data URL or an "
        "http(s) URL (v2: a BYTES tensor of several elements)",
    )
    mask_url: str | None = Field(
        None, min_length=1, repr=False, description="inpainting mask (white = repaint): an http(s) or data URL"
    )
    mask: str | bytes | None = Field(
        None, min_length=1, repr=False, description="inpainting mask inline: base64 or a data URL (v2: the file bytes)"
    )
    height: int = Field(1024, description="image height in pixels, a multiple of 8")
    width: int = Field(1024, description="image width in pixels, a multiple of 8")
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="random when absent; always echoed")
    scheduler: str | None = Field(None, description="sampler name; the family's default when absent")
    num_inference_steps: int | None = Field(
        None, ge=1, description="denoising steps; by default SDXL and Wan 25, FLUX.1-dev 28, FLUX.1-schnell 4"
    )
    refiner_inference_steps: int | None = Field(
        None, ge=1, description="SDXL refiner steps when it refines with strength (default 50)"
    )
    guidance_scale: float = Field(
        7.5, ge=0, le=50, description="guidance scale; SDXL 7.5, FLUX.1-dev 3.5, FLUX.1-schnell 0 by default"
    )
    true_cfg_scale: float | None = Field(
        None, ge=1, le=50, description="FLUX true classifier-free guidance with negative_prompt (> 1 turns it on)"
    )
    max_sequence_length: int | None = Field(
        None, ge=1, le=MAX_T5_TOKENS, description="FLUX T5 prompt tokens; 512 for dev, 256 for schnell by default"
    )
    strength: float | None = Field(
        None,
        gt=0,
        le=1,
        description="how much the input (or base) image is changed: 0.3 by default, 1.0 for inpaint",
    )
    num_images: int = Field(1, ge=1, description="images generated in one batched call")
    video_height: int = Field(
        480, description="video height in pixels, a multiple of 16 (32 for Wan2.2 TI2V-5B); the variant's default"
    )
    video_width: int = Field(704, description="video width in pixels, a multiple of 16 (32 for TI2V-5B)")
    num_frames: int = Field(25, ge=1, description="video frames; Wan needs 4k+1; the variant's default")
    video_guidance_scale: float = Field(
        6.0, ge=1, le=20, description="classifier-free guidance for video (Wan2.2 A14B: the high-noise expert's)"
    )
    video_guidance_scale_2: float | None = Field(
        None, ge=1, le=20, description="Wan2.2 A14B: guidance of the low-noise expert; the variant's default"
    )
    fps: int = Field(8, ge=6, le=30, description="frames per second of the video file; the variant's default")
    video_resolution: Literal["480p", "720p"] | None = Field(
        None,
        description="img2video without video_width/video_height: the output's area (480p: 832x480 pixels, "
        "720p: 1280x720) at the input picture's aspect ratio; the variant's default",
    )
    output_format: Literal["png", "jpeg", "webp", "mp4", "gif"] | None = Field(
        None,
        description="file format of the answer: png (default), jpeg or webp for images; mp4 (default), gif or "
        "webp for video",
    )
    quality: int | None = Field(
        None, ge=0, le=100, description="JPEG/WebP quality, 0 (smallest file) to 100 (best); 90 by default"
    )
    response_format: Literal["b64_json", "url"] | None = Field(
        None,
        description="how the answer carries the files: b64_json (base64 / data URLs) or url (presigned URLs of "
        "the files in the server's --output_store); the server's --default_response_format when absent",
    )
    provenance: str | None = Field(
        None,
        description="the marks of this output: c2pa, watermark, c2pa,watermark or off; the server's --provenance "
        "when absent, and fewer than those only where the server allows it (--allow_unmarked_requests)",
    )
    timeout: float | None = Field(
        None, gt=0, description="seconds this request may take in all, queue included (default --request_timeout)"
    )
    use_refiner: bool | None = Field(
        None, description="false skips the server's refiner for this request (text2img, img2img)"
    )
    high_noise_frac: float | None = Field(
        None, gt=0, lt=1, description="ensemble of experts: fraction of steps the base runs before the refiner"
    )
    loras: tuple[LoraChoice, ...] | None = Field(
        None,
        description='LoRA adapters from --lora_dir, combined: [{"name": "...", "scale": 1.0}] (scale -4 to 4, '
        "default 1; v2 and forms: the list as JSON text)",
    )

    @field_validator("prompt")
    @classmethod
    def _prompt_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value

    @field_validator("images", mode="before")
    @classmethod
    def _read_images(cls, value: Any) -> tuple[str | bytes, ...] | None:
        return read_images(value)

    @field_validator("loras", mode="before")
    @classmethod
    def _read_loras(cls, value: Any, info: ValidationInfo) -> tuple[LoraChoice, ...] | None:
        return read_loras(value, _limits(info).max_loras_per_request)

    @field_validator(*_SERVER_LIMITED)
    @classmethod
    def _within_server_limit(cls, value: int | None, info: ValidationInfo) -> int | None:
        limit = getattr(_limits(info), _SERVER_LIMITED[info.field_name])
        if _is_default(info.field_name, value):  # not the client's: the family fills and checks what it uses
            return value
        if value is not None and value > limit:
            raise ValueError(f"must be between 1 and {limit}")
        return value

    @field_validator("provenance")
    @classmethod
    def _within_server_marks(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        limits = _limits(info)
        asked, applied = parse_marks(value), parse_marks(limits.provenance)
        if asked - applied:
            raise ValueError(f"this server applies only {marks_text(applied)} (its --provenance), got {value[:100]!r}")
        if asked != applied and not limits.allow_unmarked_requests:
            raise ValueError(
                f"this server marks every output with {marks_text(applied)}; fewer marks need "
                f"--allow_unmarked_requests on the server, got {value[:100]!r}"
            )
        return marks_text(asked)

    @field_validator("timeout")
    @classmethod
    def _timeout_within_limit(cls, value: float | None, info: ValidationInfo) -> float | None:
        limit = _limits(info).request_timeout
        if value is not None and value > limit:
            raise ValueError(f"must be at most {limit:g} seconds (the server's --request_timeout)")
        return value

    @field_validator("height", "width", "video_height", "video_width")
    @classmethod
    def _side_within_limit(cls, value: int, info: ValidationInfo) -> int:
        limit = _limits(info).max_side
        if _is_default(info.field_name, value):  # a video side in an image request must not fail on its default
            return value
        if not MIN_SIDE <= value <= limit:
            raise ValueError(f"must be between {MIN_SIDE} and {limit}")
        return value


FIELD_NAMES = tuple(GenerationRequest.model_fields)


def _is_default(name: str, value: Any) -> bool:
    """Whether `value` is the model's own default for `name`: then the operator's limits are the family rules'
    to apply (to the value the request really uses), not the parser's. A server whose --max_side is below
    704 answered every image request with a 400 about the unused default video_width."""
    return bool(value == GenerationRequest.model_fields[name].default)


def parse_request(data: Any, limits: Limits) -> GenerationRequest:
    """Validate one instance; raise RequestError (400) naming every bad field."""
    if not isinstance(data, dict):
        raise RequestError("instance", f"expected a JSON object of parameters, got {shown(data)}")
    try:
        return GenerationRequest.model_validate(data, context=limits)
    except ValidationError as exc:
        messages = [describe_error(error, GenerationRequest) for error in exc.errors(include_url=False)]
        raise RequestErrors(list(dict.fromkeys(messages))) from None


def fill(request: GenerationRequest, **values: Any) -> GenerationRequest:
    """The request with server-chosen `values`; `model_fields_set` still means "sent by the client"."""
    filled = request.model_copy(update=values)
    filled.__pydantic_fields_set__.intersection_update(request.model_fields_set)
    return filled


def with_defaults(request: GenerationRequest, limits: Limits, **defaults: Any) -> GenerationRequest:
    """Fill the fields the client left out with the family's `defaults`, lowered to the server's limits
    (a request that names no step count never fails because the operator set --max_steps low)."""
    given = request.model_fields_set
    values = {name: value for name, value in defaults.items() if name not in given or getattr(request, name) is None}
    for name in values.keys() & _SERVER_LIMITED.keys():
        values[name] = min(values[name], getattr(limits, _SERVER_LIMITED[name]))
    return fill(request, **values)


def _v2_kind(annotation: Any) -> str:
    members = [t for t in (get_args(annotation) or (annotation,)) if t is not NoneType]
    if bytes in members:
        return "bytes"
    (base,) = members
    if get_origin(base) is tuple:  # pictures (images): several BYTES elements; adapters (loras): JSON text
        return "bytes_list" if bytes in get_args(get_args(base)[0]) else "string"
    return "string" if get_origin(base) is Literal else {str: "string", int: "int", float: "float", bool: "bool"}[base]


# The v2 value kind of each request field ('string', 'bytes', 'bytes_list', 'int', 'float' or 'bool'), worked
# out once.
FIELD_KINDS: dict[str, str] = {name: _v2_kind(f.annotation) for name, f in GenerationRequest.model_fields.items()}
# Fields that hold file bytes (v2 BYTES tensors may carry the raw file).
FILE_FIELDS = tuple(name for name, kind in FIELD_KINDS.items() if kind in ("bytes", "bytes_list"))
