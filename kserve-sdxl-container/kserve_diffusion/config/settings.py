"""Every server setting, declared once: a `ServerConfig` field with its type, default, help and bounds.

The command-line parser, the environment variable names, the `.env` reading, the limits objects and
`docs/configuration.md` are all derived from these fields (see `parsing.py` and `reference.py`).
A field without `setting(...)` metadata is resolved at startup, not set by a flag. It is one module because
every setting is declared in one place: that is its purpose.
"""

from __future__ import annotations

import math
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from functools import cache
from types import NoneType, UnionType
from typing import Any

# "auto" reads the family from the model folder's model_index.json (pipelines/detect.py).
MODEL_TYPES = ("auto", "sdxl", "flux", "wan", "qwen_image", "qwen_image_edit", "flux2", "z_image", "flux_kontext")
# The variants of the image families (pipelines/image_families.py), for --model_variant.
MODEL_VARIANTS = ("auto", "qwen_image", "edit", "edit_plus", "dev", "klein", "klein_base", "turbo", "base")
DEVICES = ("cuda", "enable_model_cpu_offload", "enable_sequential_cpu_offload", "group_offload", "cpu")
CACHES = ("none", "first_block", "taylorseer", "mag")
ATTENTION_BACKENDS = ("default", "native", "efficient", "cudnn", "flash", "flash3", "sage", "xformers", "flex")
QUANTIZATIONS = ("none", "int8", "fp8", "nf4")
DTYPES = ("auto", "float16", "bfloat16", "float32")
FLUX_VARIANTS = ("auto", "dev", "schnell")
COMPILE_MODES = ("none", "regional", "full")
TRUE_WORDS = ("true", "1", "yes", "on")
FALSE_WORDS = ("false", "0", "no", "off")


def parse_bool(text: str) -> bool:
    """Parse true/false/1/0/yes/no/on/off; anything else is an error (unlike `type=bool`)."""
    value = str(text).strip().lower()
    if value in TRUE_WORDS:
        return True
    if value in FALSE_WORDS:
        return False
    raise ValueError(f"expected true/false/1/0, got {text!r}")


@dataclass(frozen=True)
class Bounds:
    """The allowed values of a setting: choices, or a numeric range."""

    choices: Sequence[str] | None = None
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False  # "more than minimum" rather than "at least"


def setting(
    default: Any,
    help: str,  # noqa: A002 - the word argparse and the docs use
    *,
    choices: Sequence[str] | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
    exclusive_minimum: bool = False,
    default_text: str | None = None,
    secret: bool = False,
) -> Any:
    """A ServerConfig field that is also a flag (--NAME), an environment variable (NAME upper-cased) and a
    `.env` entry. `default_text` describes a default that is worked out at startup (shown instead of None);
    a `secret` one is never part of the configuration's repr (so never in a log line)."""
    bounds = Bounds(choices, minimum, maximum, exclusive_minimum)
    meta = {"setting": {"help": help, "bounds": bounds, "default_text": default_text}}
    return field(default=default, repr=not secret, metadata=meta)


@dataclass(frozen=True)
class ServerConfig:
    """Everything the server needs, typed and resolved once at startup."""

    model_type: str = setting(
        "auto",
        "model family to serve; auto reads it from the model folder's model_index.json (a single-file checkpoint "
        "without one is SDXL)",
        choices=MODEL_TYPES,
    )
    model_variant: str = setting(
        "auto",
        "variant of the image family (Qwen-Image-Edit: edit or edit_plus; FLUX.2: dev, klein or klein_base; "
        "Z-Image: turbo or base; ...), which sets the request defaults; auto: read from the folder",
        choices=MODEL_VARIANTS,
    )
    model_id: str = setting("/mnt/models", "local diffusers folder or Hugging Face hub id")
    single_file_model: str | None = setting(
        None, "base weights as one .safetensors checkpoint (FLUX: the transformer only, the rest from --model_id)"
    )
    single_file_config: str | None = setting(
        None, "local diffusers-format folder with the configs and tokenizers for --single_file_model (offline)"
    )
    use_refiner: bool | None = setting(
        None, "load the SDXL refiner", default_text="true when a refiner id or file is given"
    )
    refiner_id: str | None = setting(None, "refiner diffusers folder or hub id")
    refiner_single_file_model: str | None = setting(None, "refiner as one checkpoint file")
    refiner_single_file_config: str | None = setting(
        None, "local diffusers-format config folder for --refiner_single_file_model (offline)"
    )
    inpaint_model_id: str | None = setting(
        None,
        "dedicated SDXL inpainting model: diffusers folder, hub id or single .safetensors file; only its UNet is "
        "used, the text encoders and VAE are the base's",
        default_text="inpainting runs on the base model's modules",
    )
    inpaint_single_file_config: str | None = setting(
        None, "local diffusers-format config folder when --inpaint_model_id is a single file (offline)"
    )
    allow_private_image_urls: bool = setting(
        False,
        "let image_url/mask_url reach private, loopback and link-local addresses (in-cluster object stores); "
        "metadata endpoints stay refused",
    )
    max_image_bytes: int = setting(
        20_000_000, "largest input image file in bytes (URL, base64 or v2 tensor)", minimum=1
    )
    max_image_pixels: int = setting(40_000_000, "largest input image in pixels, checked before decoding", minimum=1)
    image_fetch_timeout: float = setting(
        10.0,
        "seconds an image_url download may take in all (connect, redirects, body)",
        minimum=0,
        exclusive_minimum=True,
    )
    device: str | None = setting(
        None,
        "where the model runs; group_offload keeps weights in CPU memory and streams blocks to the GPU",
        choices=DEVICES,
        default_text="cuda when available, else cpu",
    )
    dtype: str = setting(
        "auto",
        "weights dtype; auto: float16 (SDXL) or bfloat16 (FLUX, Wan) on CUDA, float32 on CPU",
        choices=DTYPES,
    )
    flux_variant: str = setting(
        "auto",
        "FLUX.1 variant, which sets the request defaults; auto: dev when the transformer has guidance "
        "embeddings, schnell when not",
        choices=FLUX_VARIANTS,
    )
    video_model_id: str | None = setting(
        None, "Wan diffusers folder or hub id (any Wan2.1/2.2 variant) served beside the image model (one endpoint)"
    )
    flow_shift: float | None = setting(
        None,
        "Wan scheduler flow shift, for every request",
        minimum=0,
        exclusive_minimum=True,
        default_text="the variant's (Wan2.1: 3.0 for 480p, 5.0 for 720p and up, per request; docs/video.md)",
    )
    max_frames: int = setting(81, "most video frames a request may ask for", minimum=1)
    max_video_pixels: int = setting(
        81 * 1280 * 720, "largest num_frames x video_width x video_height of one request (81 frames of 720p)", minimum=1
    )
    compile: str = setting(
        "none",
        "torch.compile the UNet/transformer: regional compiles its repeated blocks (fast to compile), full the "
        "whole module; compiled by the warm-up before ready",
        choices=COMPILE_MODES,
    )
    fuse_qkv: bool = setting(False, "fuse the attention query/key/value projections")
    cache: str = setting(
        "none",
        "reuse transformer computations between denoising steps (FLUX, Wan): first_block (First-Block-Cache), "
        "taylorseer (TaylorSeer forecasts), mag (MagCache); faster, slightly different images",
        choices=CACHES,
    )
    cache_threshold: float | None = setting(
        None,
        "first_block and mag: how much change is skipped (higher: faster, less faithful)",
        minimum=0,
        exclusive_minimum=True,
        default_text="first_block 0.05, mag 0.06",
    )
    cache_interval: int = setting(5, "taylorseer: steps between full computations", minimum=1, maximum=100)
    cache_start_step: int = setting(
        3, "taylorseer and mag: the first steps always computed in full (TaylorSeer gathers its data there)", minimum=0
    )
    cache_mag_ratios: str | None = setting(
        None,
        "mag: the model's magnitude ratios, comma-separated (one per step of a calibration run)",
        default_text="diffusers' FLUX.1 ratios for FLUX; required for Wan",
    )
    attention_backend: str = setting(
        "default",
        "attention kernel of the FLUX and Wan transformers (diffusers' set_attention_backend): native is PyTorch's "
        "SDPA, flash/flash3/sage/xformers need their package and a GPU that runs them; checked at start-up",
        choices=ATTENTION_BACKENDS,
    )
    ulysses_degree: int = setting(
        1,
        "context parallelism: split each request's sequence over this many ranks with Ulysses (all-to-all over "
        "attention heads; FLUX, FLUX.2, Qwen-Image, Wan); the pod's ranks are ulysses x ring x (2 with "
        "--cfg_parallel), one a GPU; the server starts the others itself",
        minimum=1,
    )
    ring_degree: int = setting(
        1,
        "context parallelism: ring attention over this many ranks (key/value blocks passed round); needs an "
        "attention backend that returns the log-sum-exp (flash, flash3, sage) on GPUs",
        minimum=1,
    )
    cfg_parallel: bool = setting(
        False,
        "CFG parallelism on two ranks: a request's conditional and unconditional passes at the same time (Wan, "
        "Qwen-Image), or each half of SDXL's batched CFG; not combined with --ulysses_degree or --ring_degree yet",
    )
    parallel_timeout: float = setting(
        120.0,
        "seconds a rank waits for the others in one collective before the group is taken for lost: the server "
        "turns not ready, fails the request and restarts the group",
        minimum=1,
    )
    quantize: str = setting(
        "none",
        "quantize the denoiser's weights (and FLUX's T5) while loading: int8 (torchao, weight-only; CPU too), fp8 "
        "(torchao, a GPU with FP8: Ada, Hopper or newer), nf4 (bitsandbytes 4-bit); pip install .[gpu]",
        choices=QUANTIZATIONS,
    )
    channels_last: bool = setting(False, "channels_last memory format for the UNet and 2D VAEs")
    warmup: bool | None = setting(
        None,
        "run one small generation per task before reporting ready",
        default_text="true with --compile, else false",
    )
    encode_threads: int = setting(
        2,
        "threads encoding PNG/JPEG/WebP/MP4 beside the accelerator thread; 0 encodes on the accelerator thread",
        minimum=0,
    )
    vae_tiling: bool = setting(False, "decode with a tiled VAE: less memory for large outputs")
    vae_slicing: bool = setting(False, "decode batches one item at a time: less memory")
    png_compress_level: int = setting(
        1,
        "zlib level of returned PNGs: 1 is several times faster than Pillow's 6 for 10-20 percent more bytes",
        minimum=0,
        maximum=9,
    )
    max_num_images: int = setting(4, "most images one generation may ask for", minimum=1)
    max_steps: int = setting(
        150, "most denoising steps a request may ask for; a family default above it is lowered to it", minimum=1
    )
    max_side: int = setting(2048, "largest width or height in pixels", minimum=1)
    max_pixels: int = setting(2048 * 2048, "largest width x height", minimum=1)
    max_instances: int = setting(4, "most v1 instances in one request", minimum=1)
    max_queue_size: int = setting(
        8,
        "most requests waiting behind the running generation; more are refused with 503 and Retry-After",
        minimum=1,
    )
    request_timeout: float = setting(
        600.0,
        "seconds a request may take in all (queue and generation) and the most its `timeout` may ask",
        minimum=0,
        exclusive_minimum=True,
    )
    max_body_bytes: int | None = setting(
        None,
        "largest request body in bytes; a larger one is a 413, refused before it is read when Content-Length says so",
        minimum=1,
        default_text="two --max_image_bytes images as base64 plus 4 MB (57333336 with the defaults)",
    )
    body_timeout: float = setting(
        60.0,
        "seconds a client may take to send a request body; a slower one gets a 408 and is disconnected",
        minimum=0,
        exclusive_minimum=True,
    )
    header_timeout: float = setting(
        10.0,
        "seconds a client may take from connecting (or starting a new request) to the end of its request headers",
        minimum=0,
        exclusive_minimum=True,
    )
    shutdown_grace_seconds: float = setting(
        30.0,
        "on SIGTERM, seconds the running and queued requests get to finish before they are stopped",
        minimum=0,
        exclusive_minimum=True,
    )
    job_store: str = setting(
        "memory",
        "where jobs (the /jobs routes, Prefer: respond-async, /openai/v1/videos) live: memory (this replica "
        "only) or a Redis URL, redis://[:password@]host:port/db (shared by every replica that names it)",
    )
    max_jobs: int = setting(
        1000,
        "most jobs kept (in memory or in Redis); the oldest finished ones are forgotten first, those without a result "
        "(cancelled, failed) before those with one",
        minimum=1,
    )
    max_job_result_bytes: int = setting(
        1_000_000_000,
        "most bytes of finished jobs' results kept (in memory or in Redis); the oldest finished ones are forgotten "
        "first, and a larger result fails its job with a 507",
        minimum=1,
    )
    max_jobs_per_owner: int = setting(
        100,
        "most jobs one caller (an API key, a bearer token, or --job_owner_header's value; callers without an "
        "identity count as one) may have kept at once; its oldest finished ones are forgotten first, and with "
        "all of them unfinished a new one is a 429",
        minimum=1,
    )
    job_owner_header: str | None = setting(
        None,
        "request header an authenticating proxy sets to the caller's identity (e.g. X-Forwarded-User from "
        "OpenShift's oauth-proxy); jobs belong to it. Without it a job belongs to the SHA-256 of the request's "
        "bearer token",
        default_text="none: the bearer token's hash",
    )
    api_keys: str | None = setting(
        None,
        "API keys callers must send as Authorization: Bearer KEY on every route but health, readiness and "
        "/metrics (REST and gRPC): a comma-separated list, or @/path/to/file with one key a line",
        default_text="none: no key is asked for (put authentication in front)",
        secret=True,
    )
    playground: bool = setting(
        True,
        "serve the playground page at /playground/ (a browser opening / is sent there): a form that makes images "
        "and videos through this server's own API, with no state of its own",
    )
    max_event_streams: int = setting(
        256,
        "job event streams (Server-Sent Events) open at once per replica, counted when admitted; more are a 503",
        minimum=1,
    )
    max_concurrent_downloads: int = setting(
        8,
        "job results and video files streamed to clients at once per replica; more are a 503 with Retry-After",
        minimum=1,
    )
    job_ttl_seconds: float = setting(
        3600.0,
        "seconds a finished job and its result are kept; a 404 afterwards",
        minimum=0,
        exclusive_minimum=True,
    )
    job_lease_seconds: float = setting(
        30.0,
        "with a Redis --job_store: a replica renews its hold on the job it runs every third of this; a job whose "
        "replica stopped renewing (it died) is taken by another replica after this long",
        minimum=1,
    )
    job_max_attempts: int = setting(
        2,
        "with a Redis --job_store: tries a job gets when the replicas running it die; after the last it is failed",
        minimum=1,
    )
    pod_name: str | None = setting(
        None,
        "this replica's name in job records (`replica`): the manifests set POD_NAME from the downward API",
        default_text="hostname:pid",
    )
    output_store: str | None = setting(
        None,
        "an S3-compatible bucket for results, s3://bucket/prefix: requests with response_format url get presigned "
        "URLs, and jobs keep only the object keys. Credentials and endpoint come from the AWS_* environment "
        "(AWS_ENDPOINT_URL, or an OpenShift AI data connection's AWS_S3_ENDPOINT); an unreachable store stops the "
        "start",
        default_text="none: answers carry the files (base64)",
    )
    output_url_ttl_seconds: int = setting(
        3600,
        "lifetime of the presigned URLs answered for --output_store objects (SigV4 allows at most 7 days)",
        minimum=1,
        maximum=604800,
    )
    default_response_format: str = setting(
        "b64_json",
        "how answers carry files when a request names no response_format: b64_json (base64 / data URLs) or url "
        "(presigned URLs; needs --output_store)",
        choices=("b64_json", "url"),
    )
    provenance: str = setting(
        "c2pa,watermark",
        "marks on every output saying it was made by a trained model: c2pa (signed C2PA content credentials in "
        "each PNG/JPEG/WebP/MP4/GIF) and watermark (an invisible watermark in the pixels), a comma list, or off",
    )
    allow_unmarked_requests: bool = setting(
        False, "let a request's `provenance` field ask for fewer marks than --provenance (else that is a 400)"
    )
    c2pa_cert: str | None = setting(
        None,
        "PEM file of the C2PA signing certificate chain, leaf first (ES256/384/512, PS256 or Ed25519 key)",
        default_text="a certificate made at start-up: credentials validate but read as untrusted",
    )
    c2pa_key: str | None = setting(None, "PEM file of the private key of --c2pa_cert's leaf (unencrypted)")
    c2pa_tsa_url: str | None = setting(
        None, "RFC 3161 time-stamp authority the C2PA signatures are time-stamped by (each signing calls it)"
    )
    c2pa_include_parameters: bool = setting(
        False, "also write each output's seed into its C2PA manifest (the model, family and task always are)"
    )
    lora_dir: str | None = setting(
        None,
        "folder of LoRA adapters a request may name in `loras`: each a .safetensors file (diffusers/PEFT or "
        "kohya/A1111 layout) or a folder holding one; the name is the file or folder name without .safetensors",
        default_text="none: requests with loras are a 400",
    )
    max_loras_per_request: int = setting(4, "most adapters one request may combine in `loras`", minimum=1, maximum=16)
    max_loaded_loras: int = setting(
        8,
        "most adapters kept loaded (with --compile: kept in CPU memory); the least recently used is dropped first",
        minimum=1,
    )
    preload_loras: str | None = setting(
        None,
        "comma-separated adapter names loaded at start-up; one that cannot be loaded stops the start with its reason",
    )
    max_lora_rank: int = setting(
        64,
        "with --compile: the highest adapter rank that can be swapped in without recompiling (every slot is padded "
        "to it); a higher-rank adapter is a 400",
        minimum=1,
    )
    # Resolved at startup, not flags of ours:
    model_name: str = "sdxl"  # KServe's --model_name
    video_dtype: str = "float32"  # the dtype of a --video_model_id model (--dtype auto resolves per family)
    hf_token: str | None = field(default=None, repr=False)  # a secret: never printed
    api_key_values: tuple[str, ...] = field(default=(), repr=False)  # --api_keys read (from its file): secrets
    configure_logging: bool = True
    log_config_file: str | None = None
    model_server: Mapping[str, Any] = field(default_factory=dict)  # KServe flags for kserve.ModelServer


@dataclass(frozen=True)
class Setting:
    """One declared setting, as the parser and the docs see it."""

    name: str
    kind: type  # str, int, float or bool
    default: Any
    help: str
    bounds: Bounds
    default_text: str | None

    @property
    def env(self) -> str:
        """Its environment variable (and `.env` key)."""
        return self.name.upper()

    @property
    def flag(self) -> str:
        """Its command-line flag."""
        return f"--{self.name}"

    def describe_default(self) -> str:
        """The default as a person reads it."""
        if self.default_text is not None:
            return self.default_text
        if self.default is None:
            return "none"
        if isinstance(self.default, bool):
            return str(self.default).lower()
        if isinstance(self.default, float) and self.default.is_integer():
            return str(int(self.default))
        return str(self.default)

    def describe_allowed(self) -> str:
        """The allowed values as a person reads them ('' when any text is)."""
        bounds = self.bounds
        if bounds.choices:
            return ", ".join(bounds.choices)
        if self.kind is bool:
            return "true, false"
        if bounds.minimum is None:
            return ""
        low = f"{'more than' if bounds.exclusive_minimum else 'at least'} {_number(bounds.minimum)}"
        if bounds.maximum is not None:
            return f"{_number(bounds.minimum)} to {_number(bounds.maximum)}"
        return low

    def parse(self, text: str) -> Any:
        """The typed value of `text`; ValueError naming what is allowed otherwise."""
        if self.kind is bool:
            return parse_bool(text)
        if self.kind is str:
            if self.bounds.choices and text not in self.bounds.choices:
                raise ValueError(f"expected one of {', '.join(self.bounds.choices)}, got {text!r}")
            return text
        try:
            value = self.kind(text)
        except ValueError:
            raise ValueError(f"expected {'an integer' if self.kind is int else 'a number'}, got {text!r}") from None
        bounds = self.bounds
        too_low = bounds.minimum is not None and (
            value <= bounds.minimum if bounds.exclusive_minimum else value < bounds.minimum
        )
        too_high = bounds.maximum is not None and value > bounds.maximum
        if not math.isfinite(value):  # NaN and infinity: a TTL or timeout of infinity overflows later
            raise ValueError(f"expected a finite number, {self.describe_allowed()}, got {text!r}")
        if too_low or too_high:
            raise ValueError(f"expected {self.describe_allowed()}, got {text!r}")
        return value


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _base_type(annotation: Any) -> type:
    if isinstance(annotation, UnionType) or typing.get_origin(annotation) is typing.Union:
        (member,) = [t for t in typing.get_args(annotation) if t is not NoneType]
        return member
    return annotation


@cache
def settings() -> tuple[Setting, ...]:
    """The declared settings, in declaration order."""
    hints = typing.get_type_hints(ServerConfig)
    found = []
    for item in fields(ServerConfig):
        meta = item.metadata.get("setting")
        if meta is not None:
            kind = _base_type(hints[item.name])
            found.append(Setting(item.name, kind, item.default, meta["help"], meta["bounds"], meta["default_text"]))
    return tuple(found)


def default_max_body_bytes(max_image_bytes: int) -> int:
    """The largest legitimate request: an image and a mask as base64 text, plus room for the JSON around them."""
    return 2 * math.ceil(max_image_bytes / 3) * 4 + 4_000_000


def defaults(**overrides: Any) -> ServerConfig:
    """A ServerConfig of the declared defaults resolved as on a CPU machine, with `overrides` (for tools and
    tests that build a configuration without parsing one)."""
    resolved = {
        "device": "cpu",
        "dtype": "float32",
        "use_refiner": False,
        "warmup": False,
        "max_body_bytes": 57_333_336,
    }
    return ServerConfig(**{**resolved, **overrides})
