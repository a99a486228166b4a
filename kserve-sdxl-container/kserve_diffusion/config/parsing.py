"""The command line and environment: CLI flags > environment > .env file > defaults -> ServerConfig.

The parser extends `kserve.model_server.parser`, so every standard KServe flag works too. Nothing
else in the package reads `os.environ` or `sys.argv`.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from dotenv import dotenv_values
from kserve.model_server import parser as kserve_parser

from ..errors import ConfigError
from ..redact import without_password
from .settings import ServerConfig, Setting, default_max_body_bytes, settings

TOKEN_ENV_VARS = ("HUGGINGFACE_TOKEN", "HF_TOKEN")
JOB_STORE_SCHEMES = ("redis", "rediss", "unix")
# --dtype auto on an accelerator, per family (the model cards' advice); on the CPU always float32.
# With --model_type auto the family is known only once its folder is read: "auto" until then (pipelines/detect.py).
ACCELERATOR_DTYPES = {
    "auto": "auto",
    "sdxl": "float16",
    "flux": "bfloat16",
    "wan": "bfloat16",
    "qwen_image": "bfloat16",
    "qwen_image_edit": "bfloat16",
    "flux2": "bfloat16",
    "z_image": "bfloat16",
    "flux_kontext": "bfloat16",
}
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
_HEADER_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,100}")  # RFC 9110 token
ENV_FILE_HELP = "dotenv file read for settings not given on the command line or in the environment"


def help_text(item: Setting) -> str:
    """The --help line of a setting: what it does, its allowed values, default and variable."""
    allowed = item.describe_allowed()
    allowed = f"{allowed}; " if allowed and not item.bounds.choices else ""
    return f"{item.help} ({allowed}default: {item.describe_default()}; env: {item.env})"


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
    for item in settings():
        flags = [item.flag]
        if "_" in item.name:
            flags.append(item.flag.replace("_", "-"))
        choices = item.bounds.choices
        bare: dict[str, Any] = {"nargs": "?", "const": "true"} if item.kind is bool else {}
        ours.add_argument(
            *flags,
            dest=item.name,
            default=argparse.SUPPRESS,
            metavar=("{" + ",".join(choices) + "}") if choices else "BOOL" if item.kind is bool else item.name.upper(),
            help=help_text(item),
            **bare,  # `--flag` alone means true; `--flag false` and `--flag=false` still work
        )
    ours.add_argument("--env_file", "--env-file", dest="env_file", default=".env", help=ENV_FILE_HELP)
    return parser


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def auto_dtype(model_type: str, device: str) -> str:
    """--dtype auto's choice for a family on a device."""
    return ACCELERATOR_DTYPES[model_type] if device != "cpu" else "float32"


def read_api_keys(text: str | None) -> tuple[str, ...]:
    """--api_keys: a comma-separated list, or @/path with one key a line (blank lines and # comments skipped).
    A key is printable ASCII without spaces; errors never show a key."""
    if text is None:
        return ()
    if text.startswith("@"):
        path = Path(text[1:])
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
            raise ConfigError(f"--api_keys: cannot read the key file {str(path)[:200]!r}: {reason}") from None
        keys = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
        where = f"the key file {str(path)[:200]!r}"
    else:
        keys = [part.strip() for part in text.split(",") if part.strip()]
        where = "the list"
    if not keys:
        raise ConfigError(f"--api_keys: {where} holds no key")
    for number, key in enumerate(keys, 1):
        if not (key.isascii() and key.isprintable()) or any(c.isspace() for c in key):
            raise ConfigError(f"--api_keys: key {number} of {where} is not printable ASCII without spaces")
    return tuple(dict.fromkeys(keys))


def _resolve(values: dict[str, Any], cuda_available: Callable[[], bool], workers: int) -> None:
    """Work out the defaults that depend on other settings, and refuse contradictory ones."""
    if values["device"] is None:
        values["device"] = "cuda" if cuda_available() else "cpu"
    explicit_dtype = values["dtype"] != "auto"
    values["video_dtype"] = values["dtype"] if explicit_dtype else auto_dtype("wan", values["device"])
    if not explicit_dtype:
        values["dtype"] = auto_dtype(values["model_type"], values["device"])
    if workers != 1:
        raise ConfigError(
            f"--workers: must be 1, got {workers}: each worker process would load its own copy of the model"
        )
    if values["video_model_id"] and values["model_type"] == "wan":
        raise ConfigError("--video_model_id: adds Wan beside an image model; with --model_type wan use --model_id")
    if values["warmup"] is None:
        values["warmup"] = values["compile"] != "none"  # compile on the warm-up, not on a user's request
    elif not values["warmup"] and values["compile"] != "none":
        raise ConfigError("--warmup false: --compile compiles during the warm-up generation; leave --warmup on")
    if values["max_body_bytes"] is None:
        values["max_body_bytes"] = default_max_body_bytes(values["max_image_bytes"])
    store = values["job_store"]
    if store != "memory" and urlsplit(store).scheme not in JOB_STORE_SCHEMES:
        raise ConfigError(
            f"--job_store: expected memory or a Redis URL (redis://host:port/db, rediss://, unix://), "
            f"got {without_password(store)!r}"
        )
    output_store = values["output_store"]
    if output_store is not None:
        parts = urlsplit(output_store)
        if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment or "@" in parts.netloc:
            raise ConfigError(f"--output_store: expected s3://bucket/prefix, got {without_password(output_store)!r}")
    elif values["default_response_format"] == "url":
        raise ConfigError("--default_response_format url: needs --output_store s3://bucket/prefix to put the files in")
    values["api_key_values"] = read_api_keys(values["api_keys"])
    owner_header = values["job_owner_header"]
    if owner_header is not None and not _HEADER_NAME.fullmatch(owner_header):
        raise ConfigError(f"--job_owner_header: expected an HTTP header name, got {owner_header[:100]!r}")
    refiner_given = bool(values["refiner_id"] or values["refiner_single_file_model"])
    if values["use_refiner"] is None:
        values["use_refiner"] = refiner_given
    if values["use_refiner"] and not refiner_given:
        raise ConfigError("--use_refiner: true needs --refiner_id or --refiner_single_file_model")


def parse_config(
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
    cuda_available: Callable[[], bool] = _cuda_available,
) -> ServerConfig:
    """Build the ServerConfig from argv, the environment and the .env file (in that order)."""
    args = build_parser().parse_args(argv)
    environ = os.environ if environ is None else environ
    env_file = Path(args.env_file)
    dotenv = {k: v for k, v in dotenv_values(env_file).items() if v is not None} if env_file.is_file() else {}

    values: dict[str, Any] = {}
    for item in settings():
        if item.name in vars(args):
            raw, source = getattr(args, item.name), item.flag
        elif item.env in environ:
            raw, source = environ[item.env], f"environment variable {item.env}"
        elif item.env in dotenv:
            raw, source = dotenv[item.env], f"{env_file} entry {item.env}"
        else:
            values[item.name] = item.default
            continue
        try:
            values[item.name] = item.parse(raw)
        except ValueError as exc:
            raise ConfigError(f"{source}: {exc}") from None

    token = next((environ[n] for n in TOKEN_ENV_VARS if environ.get(n)), None) or next(
        (dotenv[n] for n in TOKEN_ENV_VARS if dotenv.get(n)), None
    )
    _resolve(values, cuda_available, args.workers)
    return ServerConfig(
        model_name=args.model_name,
        hf_token=token,
        configure_logging=args.configure_logging,
        log_config_file=args.log_config_file,
        model_server={name: getattr(args, name) for name in MODEL_SERVER_FLAGS},
        **values,
    )
