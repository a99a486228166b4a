"""Scheduler registry: request name -> how to build a fresh diffusers scheduler instance.

The keys of a family's dict are also the list of names a request may use. Each request gets its
own instance built from the loaded pipeline's scheduler config, so no shared state is mutated.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    DPMSolverSinglestepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    HeunDiscreteScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
    UniPCMultistepScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from ..api.messages import quoted
from ..api.request import FAMILY_TITLES
from ..errors import RequestError

SchedulerFactory = Callable[[Mapping[str, Any]], SchedulerMixin]


def _from(cls: type[SchedulerMixin], **overrides: Any) -> SchedulerFactory:
    def build(base_config: Mapping[str, Any]) -> SchedulerMixin:
        return cls.from_config(base_config, **overrides)

    return build


# Names follow seed 000 and cog-sdxl, so existing clients keep working.
SDXL_SCHEDULERS: dict[str, SchedulerFactory] = {
    "DDIM": _from(DDIMScheduler),
    # SDXL ships skip_prk_steps=True; without it PNDM fails at small step counts.
    "PNDM": _from(PNDMScheduler, skip_prk_steps=True),
    "KLMS": _from(LMSDiscreteScheduler),
    "K_EULER": _from(EulerDiscreteScheduler),
    "K_EULER_ANCESTRAL": _from(EulerAncestralDiscreteScheduler),
    "DPMSolverMultistep": _from(DPMSolverMultistepScheduler),
    "DPMSolverSinglestep": _from(DPMSolverSinglestepScheduler),
    "HeunDiscrete": _from(HeunDiscreteScheduler),
    "KarrasDPM": _from(DPMSolverMultistepScheduler, use_karras_sigmas=True),
    "UniPC": _from(UniPCMultistepScheduler),
}
SDXL_DEFAULT_SCHEDULER = "DDIM"

# Wan is a flow-matching model: its UniPC is configured for flow prediction by the loaded config.
WAN_SCHEDULERS: dict[str, SchedulerFactory] = {"UniPC": _from(UniPCMultistepScheduler)}
WAN_DEFAULT_SCHEDULER = "UniPC"

# FLUX is a flow-matching model: Euler on the loaded config (which carries schnell's or dev's shift),
# with the sigma spacings diffusers offers for it. Each takes the pipeline's custom sigmas and mu.
# (Stochastic sampling is left out: FLUX pipelines do not pass their generator to it, so seeds would not repeat.)
FLUX_SCHEDULERS: dict[str, SchedulerFactory] = {
    "FlowMatchEuler": _from(FlowMatchEulerDiscreteScheduler),
    "FlowMatchEulerKarras": _from(FlowMatchEulerDiscreteScheduler, use_karras_sigmas=True),
    "FlowMatchEulerExponential": _from(FlowMatchEulerDiscreteScheduler, use_exponential_sigmas=True),
    "FlowMatchEulerBeta": _from(FlowMatchEulerDiscreteScheduler, use_beta_sigmas=True),
}
FLUX_DEFAULT_SCHEDULER = "FlowMatchEuler"

# Qwen-Image, FLUX.2, Z-Image and Kontext: their own flow-matching Euler, as configured in the folder (shift,
# dynamic shifting, time-shift type); the sigma spacings are left out, as their authors tuned for the default.
FLOW_SCHEDULERS: dict[str, SchedulerFactory] = {"FlowMatchEuler": _from(FlowMatchEulerDiscreteScheduler)}

# family -> (its schedulers, the default name)
FAMILY_SCHEDULERS: dict[str, tuple[Mapping[str, SchedulerFactory], str]] = {
    "sdxl": (SDXL_SCHEDULERS, SDXL_DEFAULT_SCHEDULER),
    "flux": (FLUX_SCHEDULERS, FLUX_DEFAULT_SCHEDULER),
    "wan": (WAN_SCHEDULERS, WAN_DEFAULT_SCHEDULER),
    **{
        family: (FLOW_SCHEDULERS, "FlowMatchEuler")
        for family in ("qwen_image", "qwen_image_edit", "flux2", "z_image", "flux_kontext")
    },
}


def scheduler_name(family: str, name: str | None) -> str:
    """The scheduler a request of `family` runs with: its default, or `name` if the family has it (else a 400)."""
    registry, default = FAMILY_SCHEDULERS[family]
    if name is None:
        return default
    if name in registry:
        return name
    owners = " and ".join(FAMILY_TITLES[f] for f, (other, _) in FAMILY_SCHEDULERS.items() if name in other)
    why = f" ({name} is a scheduler of {owners}; it does not apply to {FAMILY_TITLES[family]})" if owners else ""
    raise RequestError("scheduler", f"must be one of {', '.join(registry)}{why}, got {quoted(name)}")


def build_scheduler(
    registry: Mapping[str, SchedulerFactory], name: str, base_config: Mapping[str, Any]
) -> SchedulerMixin:
    """A new scheduler instance of `name`, configured like the loaded pipeline's scheduler."""
    return registry[name](base_config)
