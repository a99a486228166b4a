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
    HeunDiscreteScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
    UniPCMultistepScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

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


def build_scheduler(
    registry: Mapping[str, SchedulerFactory], name: str, base_config: Mapping[str, Any]
) -> SchedulerMixin:
    """A new scheduler instance of `name`, configured like the loaded pipeline's scheduler."""
    return registry[name](base_config)
