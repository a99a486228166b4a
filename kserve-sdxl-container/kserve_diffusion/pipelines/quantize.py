"""--quantize: the denoiser's weights (and FLUX's T5) quantized while loading, through diffusers'
PipelineQuantizationConfig: torchao for int8 and fp8, bitsandbytes for nf4.

What each mode needs is checked before any weight is read, so a missing package or a GPU without FP8 is a
start-up error that says which. On a CPU, int8 (weight-only) and fp8 (weight-only: FP8 storage, computed
in the model's dtype) run as well; on a GPU, fp8 quantizes activations too (row-wise dynamic scaling),
which needs FP8 tensor cores (compute capability 8.9: Ada, Hopper and newer).
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable, Mapping
from typing import Any

import torch

from ..config import ServerConfig
from ..errors import ConfigError
from .image_families import IMAGE_FAMILIES
from .loading import pipeline_index, present_components

logger = logging.getLogger("kserve.diffusion")
# The components each family quantizes: its denoisers, and FLUX's T5-XXL (4.7B parameters, a third of
# FLUX.1's memory). Wan's second expert exists only in the A14B folders.
COMPONENTS: dict[str, tuple[str, ...]] = {
    "sdxl": ("unet",),
    "flux": ("transformer", "text_encoder_2"),
    "wan": ("transformer", "transformer_2"),
    **{name: family.quantized for name, family in IMAGE_FAMILIES.items()},
}
# transformers models (transformers' config classes): FLUX.1's T5, the Qwen/Mistral encoders of the image families.
TEXT_ENCODERS = frozenset({"text_encoder_2", "text_encoder"})
PACKAGES = {"int8": "torchao", "fp8": "torchao", "nf4": "bitsandbytes"}
FP8_CAPABILITY = (8, 9)


def _on_cuda(config: ServerConfig) -> bool:
    return config.device not in (None, "cpu") and torch.cuda.is_available()


def _torchao(denoiser_config: Callable[[], Any], text_config: Callable[[], Any]) -> Callable[[bool], Any]:
    def build(text: bool) -> Any:
        if text:
            from transformers import TorchAoConfig as TextTorchAoConfig

            return TextTorchAoConfig(text_config())
        from diffusers import TorchAoConfig

        return TorchAoConfig(denoiser_config())

    return build


def _int8() -> Any:
    from torchao.quantization import Int8WeightOnlyConfig

    return Int8WeightOnlyConfig()


def _fp8_on(cuda: bool) -> Callable[[], Any]:
    def build() -> Any:
        if not cuda:
            from torchao.quantization import Float8WeightOnlyConfig

            return Float8WeightOnlyConfig()
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow

        return Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())

    return build


def _nf4(text: bool) -> Any:
    kwargs = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_compute_dtype": torch.bfloat16}
    if text:
        from transformers import BitsAndBytesConfig as TextBitsAndBytesConfig

        return TextBitsAndBytesConfig(**kwargs)
    from diffusers import BitsAndBytesConfig

    return BitsAndBytesConfig(**kwargs)


# --quantize value -> (on CUDA?) -> (is a text encoder?) -> a component's quantization config. T5 is kept at
# int8 weight-only under fp8: its activations overflow FP8's range.
MODES: dict[str, Callable[[bool], Callable[[bool], Any]]] = {
    "int8": lambda cuda: _torchao(_int8, _int8),
    "fp8": lambda cuda: _torchao(_fp8_on(cuda), _int8),
    "nf4": lambda cuda: _nf4,
}


def check_runs_here(config: ServerConfig) -> None:
    """Start-up errors for a --quantize mode this machine cannot run: its package, and the GPU it needs."""
    mode = config.quantize
    if mode == "none":
        return
    cuda = _on_cuda(config)
    if mode == "nf4" and not cuda:
        raise ConfigError("--quantize nf4: bitsandbytes 4-bit needs a CUDA GPU (use int8 or fp8 on a CPU)")
    package = PACKAGES[mode]
    if importlib.util.find_spec(package) is None:
        raise ConfigError(
            f"--quantize {mode}: needs the {package} package, which is not installed (pip install '.[gpu]', "
            f"or pip install {package})"
        )
    if mode == "fp8" and cuda:
        capability = torch.cuda.get_device_capability()
        if capability < FP8_CAPABILITY:
            name = torch.cuda.get_device_name()
            raise ConfigError(
                f"--quantize fp8: needs FP8 tensor cores (compute capability 8.9 or newer: L4, L40S, H100, H200), "
                f"this {name} is {capability[0]}.{capability[1]}; use --quantize int8 or nf4"
            )


def quantization_config(
    config: ServerConfig, family: str, model_id: str, flag: str, index: Mapping[str, Any] | None = None
) -> Any | None:
    """diffusers' PipelineQuantizationConfig for --quantize (None when off), for the components the folder or
    hub id `model_id` has (its model_index.json: `index` when already read)."""
    if config.quantize == "none":
        return None
    check_runs_here(config)
    present = present_components(index if index is not None else pipeline_index(model_id, flag, config.hf_token))
    from diffusers import PipelineQuantizationConfig

    build = MODES[config.quantize](_on_cuda(config))
    mapping = {name: build(name in TEXT_ENCODERS) for name in COMPONENTS[family] if name in present}
    logger.info("--quantize %s: %s", config.quantize, ", ".join(mapping))
    return PipelineQuantizationConfig(quant_mapping=mapping)


def quantize_built(pipeline: Any, family: str, config: ServerConfig) -> list[str]:
    """The same torchao configs applied to an already built pipeline (the GPU benchmark's random-weight models,
    which no folder holds): int8 and fp8 only, since bitsandbytes quantizes while loading."""
    if config.quantize == "none":
        return []
    check_runs_here(config)
    if config.quantize == "nf4":
        raise ConfigError("--quantize nf4: bitsandbytes quantizes while loading a folder, not a built model")
    from torchao.quantization import quantize_

    build = MODES[config.quantize](_on_cuda(config))
    done = []
    for name in COMPONENTS[family]:
        module = getattr(pipeline, name, None)
        if module is not None:
            text = name in TEXT_ENCODERS
            quantize_(module, build(text).quant_type)
            done.append(name)
    return done
