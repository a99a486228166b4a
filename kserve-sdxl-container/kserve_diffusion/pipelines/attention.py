"""--attention_backend: the attention kernel of the FLUX and Wan transformers, checked at start-up.

diffusers' `set_attention_backend` switches every attention layer of a transformer to one kernel of its
dispatcher. A name is checked twice before the server reports ready: diffusers refuses a backend whose
package is missing, and a tiny attention call on the model's device and dtype proves the GPU can run it
(FlashAttention-3 needs a Hopper GPU, for example), so a bad choice is a start-up error, not a 500 later.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

import torch
from diffusers import DiffusionPipeline

from ..config import ServerConfig
from ..errors import ConfigError
from .base import denoisers
from .image_families import IMAGE_FAMILIES

logger = logging.getLogger("kserve.diffusion")
# --attention_backend value -> diffusers' backend name (AttentionBackendName), and what it needs.
BACKENDS: dict[str, tuple[str, str]] = {
    "native": ("native", "PyTorch's scaled_dot_product_attention (any device)"),
    "efficient": ("_native_efficient", "PyTorch's memory-efficient SDPA kernel (CUDA)"),
    "cudnn": ("_native_cudnn", "PyTorch's cuDNN SDPA kernel (CUDA, recent cuDNN)"),
    "flash": ("flash", "the flash-attn package (pip install flash-attn) and an Ampere or newer GPU"),
    "flash3": ("_flash_3", "FlashAttention-3 (flash_attn_interface, built from source) and a Hopper GPU"),
    "sage": ("sage", "the sageattention package and an Ampere or newer GPU"),
    "xformers": ("xformers", "the xformers package and a CUDA GPU"),
    "flex": ("flex", "PyTorch's flex_attention (torch.compile'd)"),
}
SERVED_FAMILIES = ("flux", "wan", *IMAGE_FAMILIES)


def check_family(config: ServerConfig, families: Sequence[str]) -> None:
    """--attention_backend on SDXL alone is a start-up error (its UNet's attention does not use the dispatcher);
    beside a model that takes it, SDXL runs with its own attention (and the log says so)."""
    if config.attention_backend == "default":
        return
    others = [family for family in families if family not in SERVED_FAMILIES]
    if len(others) < len(families):
        for family in others:
            logger.info("--attention_backend applies to the Wan/FLUX model; %s keeps its own attention", family)
        return
    if others:
        raise ConfigError(
            f"--attention_backend {config.attention_backend}: applies to the FLUX and Wan transformers; SDXL's UNet "
            "uses PyTorch's SDPA directly (leave --attention_backend default)"
        )


def _probe(backend: str, device: torch.device, dtype: torch.dtype) -> None:
    """One tiny attention call through the dispatcher: raises when the kernel cannot run here."""
    from diffusers.models.attention_dispatch import dispatch_attention_fn

    query = torch.randn(1, 16, 2, 64, device=device, dtype=dtype)  # batch, tokens, heads, head dim
    dispatch_attention_fn(query, query, query, backend=backend)


def apply_backend(pipelines: Iterable[DiffusionPipeline], family: str, config: ServerConfig) -> None:
    """Set --attention_backend on the family's transformers (placed already), after checking it runs here."""
    if config.attention_backend == "default" or family not in SERVED_FAMILIES:
        return
    backend, needs = BACKENDS[config.attention_backend]
    transformers = denoisers(pipelines)
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    # set_attention_backend also makes its backend the process-wide default: restored if it cannot run.
    previous, _ = _AttentionBackendRegistry.get_active_backend()
    for denoiser in transformers:
        device = next(denoiser.parameters()).device
        if device.type == "cpu" and torch.cuda.is_available() and config.device != "cpu":
            device = torch.device("cuda")  # offloaded: it computes on the GPU
        try:
            denoiser.set_attention_backend(backend)
            _probe(backend, device, denoiser.dtype)
        except Exception as exc:  # diffusers and the kernels raise many types: all mean "not here"
            for module in transformers:
                module.reset_attention_backend()
            _AttentionBackendRegistry.set_active_backend(previous)
            first_line = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
            raise ConfigError(
                f"--attention_backend {config.attention_backend}: cannot run on {device.type} with "
                f"{str(denoiser.dtype).removeprefix('torch.')} ({first_line}); it needs {needs}"
            ) from None
    logger.info("attention backend %s (%s) on %d transformer(s)", config.attention_backend, backend, len(transformers))
