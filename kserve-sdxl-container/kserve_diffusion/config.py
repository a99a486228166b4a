"""The one typed server configuration: CLI flags > environment > .env file > defaults.

The parser extends `kserve.model_server.parser`, so every standard KServe flag works too. Nothing
else in the package reads `os.environ` or `sys.argv`.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dotenv import dotenv_values
from kserve.model_server import parser as kserve_parser

from .errors import ConfigError

MODEL_TYPES = ("sdxl", "flux", "wan")
DEVICES = ("cuda", "enable_model_cpu_offload", "enable_sequential_cpu_offload", "cpu")
DTYPES = ("auto", "float16", "bfloat16", "float32")
FLUX_VARIANTS = ("auto", "dev", "schnell")
COMPILE_MODES = ("none", "regional", "full")
TOKEN_ENV_VARS = ("HUGGINGFACE_TOKEN", "HF_TOKEN")
# --dtype auto on an accelerator, per family (the model cards' advice); on the CPU always float32.
ACCELERATOR_DTYPES = {"sdxl": "float16", "flux": "bfloat16", "wan": "bfloat16"}
# KServe flags passed on to kserve.ModelServer (the rest configure models or transformers).
MODEL_SERVER_FLAGS = (
    "http_port",
    "grpc_port",
    "max_threads",
    "max_asyncio_workers",
    "enable_grpc",
    "enable_docs_url",
    "enable_latency_logging",
    "access_log_format",
    "event_loop",
    "timeout_keep_alive",
    "ssl_certfile",
    "ssl_keyfile",
)


def parse_bool(text: str) -> bool:
    """Parse true/false/1/0/yes/no/on/off; anything else is an error (unlike `type=bool`)."""
    value = str(text).strip().lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off"):
        return False
    raise ValueError(f"expected true/false/1/0, got {text!r}")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(f"expected a positive integer, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError(f"expected 0 or more, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError(f"expected a positive number, got {text!r}")
    return value


def _compress_level(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 9:
        raise ValueError(f"expected 0 to 9, got {text!r}")
    return value


def _choice(choices: Sequence[str]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {text!r}")
        return text

    return parse


@dataclass(frozen=True)
class Option:
    """One of our flags: its environment variable, parser and default."""

    name: str
    env: str
    parse: Callable[[str], Any]
    default: Any
    help: str
    choices: Sequence[str] | None = None


OPTIONS: tuple[Option, ...] = (
    Option("model_type", "MODEL_TYPE", _choice(MODEL_TYPES), "sdxl", "model family to serve", MODEL_TYPES),
    Option("model_id", "MODEL_ID", str, "/mnt/models", "local diffusers folder or Hugging Face hub id"),
    Option(
        "single_file_model",
        "SINGLE_FILE_MODEL",
        str,
        None,
        "base weights as one .safetensors checkpoint (FLUX: the transformer only, the rest from --model_id)",
    ),
    Option(
        "single_file_config",
        "SINGLE_FILE_CONFIG",
        str,
        None,
        "local diffusers-format folder with the configs and tokenizers for --single_file_model (offline)",
    ),
    Option(
        "use_refiner",
        "USE_REFINER",
        parse_bool,
        None,
        "load the SDXL refiner, true/false (default: true when a refiner id or file is given)",
    ),
    Option("refiner_id", "REFINER_ID", str, None, "refiner diffusers folder or hub id"),
    Option("refiner_single_file_model", "REFINER_SINGLE_FILE_MODEL", str, None, "refiner as one checkpoint file"),
    Option(
        "refiner_single_file_config",
        "REFINER_SINGLE_FILE_CONFIG",
        str,
        None,
        "local diffusers-format config folder for --refiner_single_file_model (offline)",
    ),
    Option(
        "inpaint_model_id",
        "INPAINT_MODEL_ID",
        str,
        None,
        "dedicated SDXL inpainting model: diffusers folder, hub id or single .safetensors file "
        "(default: inpainting is built from the base model)",
    ),
    Option(
        "inpaint_single_file_config",
        "INPAINT_SINGLE_FILE_CONFIG",
        str,
        None,
        "local diffusers-format config folder when --inpaint_model_id is a single file (offline)",
    ),
    Option(
        "allow_private_image_urls",
        "ALLOW_PRIVATE_IMAGE_URLS",
        parse_bool,
        False,
        "let image_url/mask_url reach private, loopback and link-local addresses (in-cluster object stores)",
    ),
    Option("max_image_bytes", "MAX_IMAGE_BYTES", _positive_int, 20_000_000, "largest input image file in bytes"),
    Option("max_image_pixels", "MAX_IMAGE_PIXELS", _positive_int, 40_000_000, "largest input image in pixels"),
    Option(
        "image_fetch_timeout",
        "IMAGE_FETCH_TIMEOUT",
        _positive_float,
        10.0,
        "seconds an image_url download may take in all (connect, redirects, body)",
    ),
    Option(
        "device",
        "DEVICE",
        _choice(DEVICES),
        None,
        "where the model runs (default: cuda when available, else cpu)",
        DEVICES,
    ),
    Option(
        "dtype",
        "DTYPE",
        _choice(DTYPES),
        "auto",
        "weights dtype; auto: float16 (SDXL) or bfloat16 (FLUX, Wan) on CUDA, float32 on CPU",
        DTYPES,
    ),
    Option(
        "flux_variant",
        "FLUX_VARIANT",
        _choice(FLUX_VARIANTS),
        "auto",
        "FLUX.1 variant, which sets the request defaults; auto: dev when the transformer has guidance "
        "embeddings, schnell when not",
        FLUX_VARIANTS,
    ),
    Option(
        "video_model_id",
        "VIDEO_MODEL_ID",
        str,
        None,
        "Wan2.1 text-to-video diffusers folder or hub id served beside the image model (one endpoint)",
    ),
    Option(
        "flow_shift",
        "FLOW_SHIFT",
        _positive_float,
        None,
        "Wan scheduler flow shift (default: 3.0 for 480p, 5.0 for 720p and up, per request)",
    ),
    Option("max_frames", "MAX_FRAMES", _positive_int, 81, "most video frames a request may ask for"),
    Option(
        "max_video_pixels",
        "MAX_VIDEO_PIXELS",
        _positive_int,
        81 * 1280 * 720,
        "largest num_frames x video_width x video_height of one request",
    ),
    Option(
        "compile",
        "COMPILE",
        _choice(COMPILE_MODES),
        "none",
        "torch.compile the UNet/transformer: regional compiles its repeated blocks (fast to compile), full the "
        "whole module; compiled by the warm-up before ready",
        COMPILE_MODES,
    ),
    Option("fuse_qkv", "FUSE_QKV", parse_bool, False, "fuse the attention query/key/value projections"),
    Option("channels_last", "CHANNELS_LAST", parse_bool, False, "channels_last memory format for the UNet and 2D VAEs"),
    Option(
        "warmup",
        "WARMUP",
        parse_bool,
        None,
        "run one small generation per task before reporting ready (default: true with --compile, else false)",
    ),
    Option(
        "encode_threads",
        "ENCODE_THREADS",
        _non_negative_int,
        2,
        "threads encoding PNG/JPEG/WebP/MP4 beside the accelerator thread; 0 encodes on the accelerator thread",
    ),
    Option("vae_tiling", "VAE_TILING", parse_bool, False, "decode with a tiled VAE: less memory for large outputs"),
    Option("vae_slicing", "VAE_SLICING", parse_bool, False, "decode batches one item at a time: less memory"),
    Option(
        "png_compress_level",
        "PNG_COMPRESS_LEVEL",
        _compress_level,
        1,
        "zlib level of returned PNGs, 0-9: 1 is several times faster than Pillow's 6 for 10-20 percent more bytes",
    ),
    Option("max_num_images", "MAX_NUM_IMAGES", _positive_int, 4, "most images one generation may ask for"),
    Option("max_steps", "MAX_STEPS", _positive_int, 150, "most denoising steps a request may ask for"),
    Option("max_side", "MAX_SIDE", _positive_int, 2048, "largest width or height in pixels"),
    Option("max_pixels", "MAX_PIXELS", _positive_int, 2048 * 2048, "largest width x height"),
    Option("max_instances", "MAX_INSTANCES", _positive_int, 4, "most v1 instances in one request"),
    Option(
        "max_queue_size",
        "MAX_QUEUE_SIZE",
        _positive_int,
        8,
        "most requests waiting behind the running generation; more are refused with 503 and Retry-After",
    ),
    Option(
        "request_timeout",
        "REQUEST_TIMEOUT",
        _positive_float,
        600.0,
        "seconds a request may take in all (queue and generation) and the most its `timeout` may ask",
    ),
    Option(
        "shutdown_grace_seconds",
        "SHUTDOWN_GRACE_SECONDS",
        _positive_float,
        30.0,
        "on SIGTERM, seconds the running and queued requests get to finish before they are stopped",
    ),
)


@dataclass(frozen=True)
class ServerConfig:
    """Everything the server needs, typed and resolved once at startup."""

    model_name: str = "sdxl"
    model_type: str = "sdxl"
    model_id: str = "/mnt/models"
    single_file_model: str | None = None
    single_file_config: str | None = None
    use_refiner: bool = False
    refiner_id: str | None = None
    refiner_single_file_model: str | None = None
    refiner_single_file_config: str | None = None
    inpaint_model_id: str | None = None
    inpaint_single_file_config: str | None = None
    allow_private_image_urls: bool = False
    max_image_bytes: int = 20_000_000
    max_image_pixels: int = 40_000_000
    image_fetch_timeout: float = 10.0
    flux_variant: str = "auto"
    video_model_id: str | None = None
    flow_shift: float | None = None
    max_frames: int = 81
    max_video_pixels: int = 81 * 1280 * 720
    vae_tiling: bool = False
    vae_slicing: bool = False
    compile: str = "none"
    fuse_qkv: bool = False
    channels_last: bool = False
    warmup: bool = False
    encode_threads: int = 2
    device: str = "cpu"
    dtype: str = "float32"
    video_dtype: str = "float32"  # the dtype of a --video_model_id model
    png_compress_level: int = 1
    max_num_images: int = 4
    max_steps: int = 150
    max_side: int = 2048
    max_pixels: int = 2048 * 2048
    max_instances: int = 4
    max_queue_size: int = 8
    request_timeout: float = 600.0
    shutdown_grace_seconds: float = 30.0
    hf_token: str | None = field(default=None, repr=False)  # a secret: never printed
    configure_logging: bool = True
    log_config_file: str | None = None
    model_server: Mapping[str, Any] = field(default_factory=dict)


def build_parser() -> argparse.ArgumentParser:
    """The CLI parser: KServe's standard flags plus ours (each also as --kebab-case)."""
    parser = argparse.ArgumentParser(
        prog="kserve-diffusion",
        description="KServe model server for diffusers pipelines (SDXL, FLUX, Wan).",
        parents=[kserve_parser],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        allow_abbrev=False,
    )
    ours = parser.add_argument_group(
        "kserve-diffusion", "each flag can also be set by its environment variable or in .env"
    )
    for option in OPTIONS:
        flags = [f"--{option.name}"]
        if "_" in option.name:
            flags.append(f"--{option.name.replace('_', '-')}")
        default = "" if "(default:" in option.help else f"default: {option.default}; "
        ours.add_argument(
            *flags,
            dest=option.name,
            default=argparse.SUPPRESS,
            metavar=("{" + ",".join(option.choices) + "}") if option.choices else option.name.upper(),
            help=f"{option.help} ({default}env: {option.env})",
        )
    ours.add_argument(
        "--env_file",
        "--env-file",
        dest="env_file",
        default=".env",
        help="dotenv file read for settings not given on the command line or in the environment",
    )
    return parser


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _auto_dtype(model_type: str, device: str) -> str:
    return ACCELERATOR_DTYPES[model_type] if device != "cpu" else "float32"


def parse_config(
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
    cuda_available: Callable[[], bool] = _cuda_available,
) -> ServerConfig:
    """Build the ServerConfig from argv, the environment and the .env file (in that order)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    environ = os.environ if environ is None else environ
    env_file = Path(args.env_file)
    dotenv = {k: v for k, v in dotenv_values(env_file).items() if v is not None} if env_file.is_file() else {}

    values: dict[str, Any] = {}
    for option in OPTIONS:
        if option.name in vars(args):
            raw, source = getattr(args, option.name), f"--{option.name}"
        elif option.env in environ:
            raw, source = environ[option.env], f"environment variable {option.env}"
        elif option.env in dotenv:
            raw, source = dotenv[option.env], f"{env_file} entry {option.env}"
        else:
            values[option.name] = option.default
            continue
        try:
            values[option.name] = option.parse(raw)
        except ValueError as exc:
            raise ConfigError(f"{source}: {exc}") from None

    token = next((environ[n] for n in TOKEN_ENV_VARS if environ.get(n)), None) or next(
        (dotenv[n] for n in TOKEN_ENV_VARS if dotenv.get(n)), None
    )
    if values["device"] is None:
        values["device"] = "cuda" if cuda_available() else "cpu"
    explicit_dtype = values["dtype"] != "auto"
    values["video_dtype"] = values["dtype"] if explicit_dtype else _auto_dtype("wan", values["device"])
    if not explicit_dtype:
        values["dtype"] = _auto_dtype(values["model_type"], values["device"])
    if args.workers != 1:
        raise ConfigError(
            f"--workers: must be 1, got {args.workers}: each worker process would load its own copy of the model"
        )
    if values["video_model_id"] and values["model_type"] == "wan":
        raise ConfigError("--video_model_id: adds Wan beside an image model; with --model_type wan use --model_id")
    if values["warmup"] is None:
        values["warmup"] = values["compile"] != "none"  # compile on the warm-up, not on a user's request
    elif not values["warmup"] and values["compile"] != "none":
        raise ConfigError("--warmup false: --compile compiles during the warm-up generation; leave --warmup on")
    refiner_given = bool(values["refiner_id"] or values["refiner_single_file_model"])
    if values["use_refiner"] is None:
        values["use_refiner"] = refiner_given
    if values["use_refiner"] and not refiner_given:
        raise ConfigError("--use_refiner: true needs --refiner_id or --refiner_single_file_model")
    return ServerConfig(
        model_name=args.model_name,
        hf_token=token,
        configure_logging=args.configure_logging,
        log_config_file=args.log_config_file,
        model_server={name: getattr(args, name) for name in MODEL_SERVER_FLAGS},
        **values,
    )
