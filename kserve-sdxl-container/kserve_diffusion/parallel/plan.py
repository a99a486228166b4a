"""The ranks a request is spread over, and the start-up checks that refuse what cannot work, naming the flag."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from ..config import ServerConfig
from ..errors import ConfigError

# Attention backends that return the log-sum-exp ring attention merges blocks with (diffusers' names).
LSE_BACKENDS = ("flash", "flash3", "sage")


@dataclass(frozen=True)
class ParallelPlan:
    """--ulysses_degree x --ring_degree ranks (x 2 with --cfg_parallel), one accelerator each."""

    ulysses: int = 1
    ring: int = 1
    cfg: bool = False

    @classmethod
    def from_config(cls, config: ServerConfig) -> ParallelPlan:
        """The plan the flags ask for."""
        return cls(config.ulysses_degree, config.ring_degree, config.cfg_parallel)

    @property
    def context(self) -> bool:
        """Whether the sequence is split (Ulysses or Ring)."""
        return self.ulysses * self.ring > 1

    @property
    def world_size(self) -> int:
        """How many ranks (processes, one a GPU) serve one request."""
        return self.ulysses * self.ring * (2 if self.cfg else 1)

    @property
    def enabled(self) -> bool:
        """Whether more than one rank serves a request."""
        return self.world_size > 1

    @property
    def flag(self) -> str:
        """The flag to name in a message about the plan."""
        if not self.context:
            return "--cfg_parallel"
        return "--ring_degree" if self.ring > 1 and self.ulysses == 1 else "--ulysses_degree"


def check_devices(plan: ParallelPlan, config: ServerConfig) -> None:
    """Refuse a plan the visible accelerators or the attention backend cannot run (before loading anything)."""
    if not plan.enabled:
        return
    if plan.cfg and plan.context:
        raise ConfigError(
            "--cfg_parallel: not combined with --ulysses_degree or --ring_degree yet (each splits a request its own "
            "way over the ranks); use one of them"
        )
    if config.device.startswith("cuda"):
        visible = torch.cuda.device_count()
        if visible < plan.world_size:
            raise ConfigError(
                f"{plan.flag}: {plan.world_size} ranks (ulysses {plan.ulysses} x ring {plan.ring}) need as many "
                f"GPUs, {visible} visible (the pod's nvidia.com/gpu limit)"
            )
    elif config.device != "cpu":  # the offload modes: every rank would hold the whole model in CPU memory
        raise ConfigError(
            f"{plan.flag}: context parallelism runs with --device cuda (or cpu, for tests), got {config.device}"
        )
    if plan.context and config.compile != "none":
        raise ConfigError(
            f"--compile: not combined with {plan.flag} yet (diffusers' context-parallel hooks around a compiled "
            "transformer are unmeasured here); leave one of them out"
        )
    if plan.ring > 1 and (config.device == "cpu" or config.attention_backend not in LSE_BACKENDS):
        raise ConfigError(
            f"--ring_degree: ring attention needs an attention backend that returns the log-sum-exp "
            f"(--attention_backend {', '.join(LSE_BACKENDS)}, on GPUs), "
            f"got {config.attention_backend} on {config.device}"
        )


def check_models(plan: ParallelPlan, denoisers: Iterable[torch.nn.Module], family: str) -> None:
    """Refuse a model without a context-parallel plan, or whose heads the Ulysses degree does not divide."""
    found = list(denoisers)
    if not plan.context:
        return  # CFG parallelism splits the passes, not the model: any denoiser
    if not found:
        raise ConfigError(f"{plan.flag}: the {family} family has no transformer to split (SDXL's UNet cannot be)")
    for model in found:
        name = type(model).__name__
        if getattr(model, "_cp_plan", None) is None:
            raise ConfigError(f"{plan.flag}: {name} ({family}) has no context-parallel plan in diffusers")
        heads = getattr(model.config, "num_attention_heads", None)
        if heads is not None and heads % plan.ulysses:
            raise ConfigError(f"--ulysses_degree: must divide {name}'s {heads} attention heads, got {plan.ulysses}")
