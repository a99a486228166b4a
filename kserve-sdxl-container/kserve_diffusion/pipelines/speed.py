"""Speed options applied to loaded pipelines: fused QKV projections, channels_last, torch.compile.

Each option acts once per module object (the image-to-image and inpainting pipelines share the base's
modules), after the modules are placed on their device. Compilation itself happens on the first call,
which `--warmup` makes before the server reports ready.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch
from diffusers import AutoencoderKL, DiffusionPipeline
from diffusers.models.attention_processor import FusedAttnProcessor2_0

from ..config import ServerConfig
from ..errors import ConfigError
from .base import denoisers

logger = logging.getLogger("kserve.diffusion")


def _image_vaes(pipelines: Iterable[DiffusionPipeline]) -> list[AutoencoderKL]:
    """The distinct 2D VAEs (AutoencoderKL) of `pipelines`; Wan's 3D VAE is not one."""
    found: dict[int, AutoencoderKL] = {}
    for pipeline in pipelines:
        vae = getattr(pipeline, "vae", None)
        if isinstance(vae, AutoencoderKL):
            found.setdefault(id(vae), vae)
    return list(found.values())


def _has_convolutions(module: torch.nn.Module) -> bool:
    return any(isinstance(child, torch.nn.Conv2d) for child in module.modules())


def fuse_qkv(pipelines: list[DiffusionPipeline]) -> list[str]:
    """Fuse the attention input projections of every denoiser and 2D VAE: one matmul instead of three."""
    fused = []
    modules = [*denoisers(pipelines), *_image_vaes(pipelines)]
    unfusable = [type(module).__name__ for module in modules if not hasattr(module, "fuse_qkv_projections")]
    if unfusable:  # Z-Image's transformer: its attention has no separate projections to fuse
        raise ConfigError(f"--fuse_qkv: {', '.join(unfusable)} has no fusable attention projections; leave it off")
    for module in modules:
        module.fuse_qkv_projections()
        # The UNet and VAE attention (the classic Attention class) need the fused processor; FLUX's and
        # Wan's processors read the fused weights themselves.
        if type(module).__name__ in ("UNet2DConditionModel", "AutoencoderKL"):
            module.set_attn_processor(FusedAttnProcessor2_0())
        fused.append(type(module).__name__)
    return fused


def channels_last(pipelines: list[DiffusionPipeline]) -> list[str]:
    """NHWC memory format for the modules made of 2D convolutions (SDXL's UNet, the 2D VAEs)."""
    changed = []
    for module in [*denoisers(pipelines), *_image_vaes(pipelines)]:
        if _has_convolutions(module):
            module.to(memory_format=torch.channels_last)
            changed.append(type(module).__name__)
    return changed


def compile_denoisers(pipelines: list[DiffusionPipeline], mode: str, fullgraph: bool = True) -> list[str]:
    """torch.compile the denoisers in place: `regional` compiles each repeated block (diffusers'
    compile_repeated_blocks: compiled once, reused by every block), `full` the whole module. `fullgraph`
    False lets Python hooks inside a block (--cache's) run between compiled graphs."""
    compiled = []
    for module in denoisers(pipelines):
        if mode == "regional":
            module.compile_repeated_blocks(fullgraph=fullgraph)
        else:
            module.compile(fullgraph=fullgraph)
        compiled.append(type(module).__name__)
    return compiled


def apply_speed_options(pipelines: Iterable[DiffusionPipeline | None], config: ServerConfig) -> None:
    """Apply --fuse_qkv, --channels_last and --compile to the (already placed) pipelines."""
    loaded = [pipeline for pipeline in pipelines if pipeline is not None]
    if config.fuse_qkv:
        logger.info("fused QKV projections in %s", ", ".join(fuse_qkv(loaded)))
    if config.channels_last:
        changed = channels_last(loaded)
        if changed:
            logger.info("channels_last memory format for %s", ", ".join(changed))
        else:  # Wan: 3D convolutions only
            logger.warning("--channels_last: no 2D convolution module here to apply it to")
    if config.compile != "none":
        compiled = compile_denoisers(loaded, config.compile, fullgraph=config.cache == "none")
        logger.info("%s torch.compile of %s (compiled on first use)", config.compile, ", ".join(compiled))
