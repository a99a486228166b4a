"""Model family registry: the one place that maps --model_type to loading code."""

from __future__ import annotations

from ..errors import ConfigError
from . import sdxl
from .base import Family, Runner

FAMILIES: dict[str, Family] = {
    "sdxl": Family("sdxl", "Stable Diffusion XL (base, optional refiner)", load=sdxl.load),
    "flux": Family("flux", "FLUX.1", unavailable="FLUX support is planned but not implemented yet"),
    "wan": Family("wan", "Wan2.1 text-to-video", unavailable="Wan2.1 video support is planned but not implemented yet"),
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


__all__ = ["FAMILIES", "Family", "Runner", "get_family"]
