"""Device modes and dtypes: one registry entry per --device value."""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers import DiffusionPipeline

from ..config import ServerConfig
from ..errors import ConfigError

DTYPES: dict[str, torch.dtype] = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
}


def group_offload(pipeline: DiffusionPipeline, onload: str = "cuda", streams: bool = True) -> None:
    """Block-level group offloading: weights stay in CPU memory and each transformer / UNet block is moved to
    `onload` just before it runs; with CUDA streams the next block is copied while the current one computes
    (close to model offload's speed at a fraction of its memory)."""
    from diffusers.hooks.group_offloading import _is_group_offload_enabled

    # The image-to-image and inpainting pipelines share the base's modules: each is offloaded once.
    done = [
        name
        for name, module in pipeline.components.items()
        if isinstance(module, torch.nn.Module) and _is_group_offload_enabled(module)
    ]
    # The VAE (80-300M parameters) stays whole on the GPU: pipelines call its decode(), not its forward, so
    # offloaded top-level layers of a VAE without declared blocks (Qwen-Image's, FLUX.2's) stayed in CPU memory,
    # and SDXL's float32 upcast of the VAE cannot move a group-offloaded module (both seen on an H200).
    vae = getattr(pipeline, "vae", None)
    if isinstance(vae, torch.nn.Module) and "vae" not in done:
        vae.to(onload)
        done.append("vae")
    pipeline.enable_group_offload(
        exclude_modules=done,
        onload_device=torch.device(onload),
        offload_device=torch.device("cpu"),
        offload_type="block_level",
        num_blocks_per_group=1,
        use_stream=streams,
        non_blocking=streams,
    )


# How each --device value places a pipeline. The offload modes keep weights in CPU memory and
# move them to the GPU per model (model offload), per block (group offload) or per layer (sequential).
PLACEMENTS: dict[str, Callable[[DiffusionPipeline], object]] = {
    "cuda": lambda pipeline: pipeline.to("cuda"),
    "enable_model_cpu_offload": lambda pipeline: pipeline.enable_model_cpu_offload(),
    "enable_sequential_cpu_offload": lambda pipeline: pipeline.enable_sequential_cpu_offload(),
    "group_offload": group_offload,
    "cpu": lambda pipeline: pipeline.to("cpu"),
}


def check_device(mode: str) -> None:
    """Fail at startup when a CUDA mode is asked for on a machine without CUDA."""
    if mode != "cpu" and not torch.cuda.is_available():
        raise ConfigError(f"--device: {mode} needs a CUDA GPU and none is available; use --device cpu")


def apply_vae_options(pipeline: DiffusionPipeline, config: ServerConfig) -> None:
    """Tiled / sliced VAE decoding when --vae_tiling / --vae_slicing ask for it (less memory, a bit slower)."""
    vae = getattr(pipeline, "vae", None)
    if vae is None:
        return
    if config.vae_tiling:
        vae.enable_tiling()
    if config.vae_slicing:
        vae.enable_slicing()


def place(pipeline: DiffusionPipeline, mode: str) -> None:
    """Put `pipeline` where --device says."""
    PLACEMENTS[mode](pipeline)
