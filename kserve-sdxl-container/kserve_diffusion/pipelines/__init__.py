"""Model family registry: the one place that maps --model_type (and --video_model_id) to loading code."""

from __future__ import annotations

from dataclasses import replace

from ..config import ServerConfig
from ..errors import ConfigError
from . import attention, cache, combinations, flux, image_runner, sdxl, wan
from .base import Family, Runner, StepObserver
from .combined import CombinedRunner
from .detect import resolve_model_type

FAMILIES: dict[str, Family] = {
    "sdxl": Family("sdxl", "Stable Diffusion XL (base, optional refiner)", load=sdxl.load),
    "flux": Family("flux", "FLUX.1 (dev or schnell)", load=flux.load),
    "wan": Family("wan", "Wan2.1/2.2 text- and image-to-video", load=wan.load),
    **image_runner.registry_entries(),  # Qwen-Image, Qwen-Image-Edit, FLUX.2, Z-Image, FLUX.1 Kontext
}


def get_family(name: str) -> Family:
    """The family called `name`, or a ConfigError listing the known ones."""
    family = FAMILIES.get(name)
    if family is None:
        raise ConfigError(f"--model_type: expected one of {', '.join(FAMILIES)}, got {name!r}")
    return family


def serving_family(config: ServerConfig) -> Family:
    """What this server loads: --model_type's family, plus Wan video beside it with --video_model_id; flags
    that cannot work together are a ConfigError here, before anything loads. With --model_type auto the family
    is read from the folder (resolve_model_type; `__main__` resolves first, so the service sees the family)."""
    combinations.check(config)
    if config.model_type == "auto":
        resolved = resolve_model_type(config)
        family = serving_family(resolved)
        return replace(family, load=lambda config: family.load(resolve_model_type(config)))
    family = get_family(config.model_type)
    served = (family.name, "wan") if config.video_model_id else (family.name,)
    # Each option applies to the served models that take it (SDXL's UNet has neither cache hooks nor the
    # attention dispatcher): an error only when none of them does.
    cache.check_family(config, served)
    attention.check_family(config, served)
    if not config.video_model_id:
        return family
    image_load = family.load

    def load_both(config: ServerConfig) -> Runner:
        video = wan.load(config, config.video_model_id, "--video_model_id")
        return CombinedRunner(image_load(config), video)

    return replace(family, title=f"{family.title} + Wan video", load=load_both)


__all__ = [
    "FAMILIES",
    "CombinedRunner",
    "Family",
    "Runner",
    "StepObserver",
    "get_family",
    "resolve_model_type",
    "serving_family",
]
