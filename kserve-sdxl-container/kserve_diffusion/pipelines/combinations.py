"""Flags that cannot work together: each pair is a start-up error naming both flags and why, before any
weight is loaded."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..config import ServerConfig
from ..errors import ConfigError


@dataclass(frozen=True)
class Conflict:
    """Two settings that cannot be used together: `first` and `second` are flag texts formatted with the
    configuration's values (e.g. "--cache {cache}")."""

    first: str
    second: str
    applies: Callable[[ServerConfig], bool]
    why: str


OFFLOAD_BY_LAYER = ("enable_sequential_cpu_offload", "group_offload")
CONFLICTS: tuple[Conflict, ...] = (
    Conflict(
        "--device {device}",
        "--compile full",
        lambda c: c.device in OFFLOAD_BY_LAYER and c.compile == "full",
        "offload hooks move weights around every layer or block in Python, which one whole-model graph cannot "
        "hold; use --compile regional, or --device cuda / enable_model_cpu_offload",
    ),
    Conflict(
        "--cache {cache}",
        "--compile full",
        lambda c: c.cache != "none" and c.compile == "full",
        "the cache decides at every step, in Python, whether blocks run: use --compile regional, which compiles "
        "each block and leaves those decisions outside",
    ),
    Conflict(
        "--quantize {quantize}",
        "--single_file_model",
        lambda c: c.quantize != "none" and c.single_file_model is not None,
        "weights are quantized while loading a diffusers folder or hub id (--model_id); convert the checkpoint "
        "to a folder or leave --quantize none",
    ),
    Conflict(
        "--quantize {quantize}",
        "--fuse_qkv",
        lambda c: c.quantize != "none" and c.fuse_qkv,
        "fusing concatenates the query, key and value weights, which quantized weights cannot be",
    ),
    Conflict(
        "--quantize {quantize}",
        "--lora_dir",
        lambda c: c.quantize != "none" and c.lora_dir is not None and c.compile != "none",
        "with --compile, LoRA adapters are hot-swapped into padded slots of full-precision weights; leave "
        "--compile none to combine adapters with quantized weights",
    ),
)


def check(config: ServerConfig) -> None:
    """Raise ConfigError for the first pair of settings in `CONFLICTS` that this configuration combines."""
    values = vars(config)
    for conflict in CONFLICTS:
        if conflict.applies(config):
            first, second = conflict.first.format(**values), conflict.second.format(**values)
            raise ConfigError(f"{first} with {second}: {conflict.why}")
