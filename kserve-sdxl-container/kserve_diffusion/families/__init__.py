"""Model family registry: the one place that maps --model_type (and --video_model_id) to loading code."""

from __future__ import annotations

from dataclasses import replace

from ..config import ServerConfig
from ..errors import ConfigError
from . import sdxl, wan
from .base import Family, Runner
from .combined import CombinedRunner

FAMILIES: dict[str, Family] = {
    "sdxl": Family("sdxl", "Stable Diffusion XL (base, optional refiner)", load=sdxl.load),
    "flux": Family("flux", "FLUX.1", unavailable="FLUX support is planned but not implemented yet"),
    "wan": Family("wan", "Wan2.1 text-to-video", load=wan.load),
}


def get_family(name: str) -> Family:
    """The servable family called `name`, or a ConfigError saying why not."""
    family = FAMILIES.get(name)
    if family is None:
        raise ConfigError(f"--model_type: expected one of {', '.join(FAMILIES)}, got {name!r}")
    if family.load is None:
        servable = ", ".join(n for n, f in FAMILIES.items() if f.load is not None)
        raise ConfigError(f"--model_type {name}: {family.unavailable}; this version serves: {servable}")
    return family


def serving_family(config: ServerConfig) -> Family:
    """What this server loads: --model_type's family, plus Wan video beside it with --video_model_id."""
    family = get_family(config.model_type)
    if not config.video_model_id:
        return family
    image_load = family.load
    assert image_load is not None

    def load_both(config: ServerConfig) -> Runner:
        video = wan.load(config, config.video_model_id, "--video_model_id")
        return CombinedRunner(image_load(config), video)

    return replace(family, title=f"{family.title} + Wan2.1 text-to-video", load=load_both)


__all__ = ["FAMILIES", "CombinedRunner", "Family", "Runner", "get_family", "serving_family"]
