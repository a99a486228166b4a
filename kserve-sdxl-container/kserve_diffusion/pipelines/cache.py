"""--cache: diffusers' cache hooks on the FLUX and Wan transformers, and how much of each request they skipped.

A cache reuses what the transformer computed at earlier steps: First-Block-Cache skips the remaining blocks
when the first block's output barely changed, MagCache skips blocks while the accumulated change stays
small, TaylorSeer forecasts attention outputs between full steps. What was skipped is counted per
request: each attention layer gets an innermost hook (registered before the cache's), which runs only
when the layer really computes; the layers times the denoiser calls is what an uncached run computes.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from diffusers import DiffusionPipeline
from diffusers.hooks import FirstBlockCacheConfig, HookRegistry, MagCacheConfig, ModelHook, TaylorSeerCacheConfig
from diffusers.hooks.mag_cache import FLUX_MAG_RATIOS
from diffusers.models.attention import AttentionModuleMixin
from diffusers.models.attention_processor import Attention

from ..config import ServerConfig
from ..errors import ConfigError
from .base import StepObserver, denoisers
from .image_families import IMAGE_FAMILIES

logger = logging.getLogger("kserve.diffusion")
ALL_CACHES = ("first_block", "taylorseer", "mag")
# The --cache values diffusers' hooks run on, per family (measured on the tiny models: First Block Cache fails
# inside the Qwen-Image and FLUX.2 blocks; Z-Image's transformer has no cache hooks at all).
CACHE_SUPPORT: dict[str, tuple[str, ...]] = {
    "flux": ALL_CACHES,
    "wan": ALL_CACHES,
    **{name: family.caches for name, family in IMAGE_FAMILIES.items()},
}
_COUNTER = "kserve_diffusion_counter"
DEFAULT_THRESHOLDS = {"first_block": 0.05, "mag": 0.06}
DEFAULT_STEPS = 28  # MagCache is set up for this many steps until a request says otherwise


@dataclass
class SkipTally:
    """Attention-layer evaluations of the current request: computed, and those an uncached run computes."""

    layers: int = 0  # attention layers per denoiser call
    calls: int = 0
    computed: int = 0

    def reset(self) -> None:
        """Start counting a new request."""
        self.calls = self.computed = 0

    @property
    def total(self) -> int:
        """What the request would have computed without the cache."""
        return self.calls * self.layers

    @property
    def skipped(self) -> int:
        """What the cache skipped."""
        return max(0, self.total - self.computed)


class _Count(ModelHook):
    """Counts the calls that reach the module's own forward."""

    def __init__(self, count: Callable[[], None]):
        super().__init__()
        self.count = count

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        self.count()
        return self.fn_ref.original_forward(*args, **kwargs)


def _mag_ratios(config: ServerConfig, family: str) -> torch.Tensor:
    if config.cache_mag_ratios:
        try:
            ratios = [float(value) for value in config.cache_mag_ratios.split(",")]
        except ValueError:
            raise ConfigError(
                f"--cache_mag_ratios: expected numbers separated by commas, got {config.cache_mag_ratios!r}"
            ) from None
        if len(ratios) < 2 or not all(0 < ratio < 10 for ratio in ratios):
            raise ConfigError("--cache_mag_ratios: expected at least 2 ratios, each between 0 and 10")
        return torch.tensor(ratios)
    if family == "flux":
        return FLUX_MAG_RATIOS
    raise ConfigError(
        f"--cache mag: MagCache needs the model's magnitude ratios; diffusers has them for FLUX.1 only, so give "
        f"--cache_mag_ratios for {family} (from a calibration run: docs/operations.md)"
    )


def _threshold(config: ServerConfig) -> float:
    return config.cache_threshold if config.cache_threshold is not None else DEFAULT_THRESHOLDS[config.cache]


# The attention layers TaylorSeer forecasts, where diffusers' default names miss them (Wan's attn1 and attn2).
TAYLORSEER_LAYERS: dict[str, list[str]] = {"wan": [r"blocks\.\d+\.attn[12]"]}
# --cache value -> its diffusers config for a family, a denoiser dtype and a request's step count.
CacheFactory = Callable[[ServerConfig, str, torch.dtype, int], Any]
CACHES: dict[str, CacheFactory] = {
    "first_block": lambda config, family, dtype, steps: FirstBlockCacheConfig(threshold=_threshold(config)),
    "taylorseer": lambda config, family, dtype, steps: TaylorSeerCacheConfig(
        cache_interval=config.cache_interval,
        disable_cache_before_step=config.cache_start_step,
        taylor_factors_dtype=dtype,
        cache_identifiers=TAYLORSEER_LAYERS.get(family),
    ),
    "mag": lambda config, family, dtype, steps: MagCacheConfig(
        threshold=_threshold(config),
        retention_ratio=min(1.0, config.cache_start_step / steps),
        num_inference_steps=steps,
        mag_ratios=_mag_ratios(config, family),
    ),
}
# The caches whose config depends on the request's step count (set again when it changes).
PER_STEP_COUNT = frozenset({"mag"})


class DenoiserCache:
    """The cache of one family's denoisers (FLUX: one transformer; Wan2.2 A14B: two), with its tally."""

    def __init__(self, modules: list[torch.nn.Module], family: str, config: ServerConfig):
        self.denoisers = modules
        self.family = family
        self.config = config
        self.tally = SkipTally()
        self.steps: int | None = None
        for denoiser in modules:
            layers = [module for module in denoiser.modules() if isinstance(module, (Attention, AttentionModuleMixin))]
            self.tally.layers += len(layers)
            for layer in layers:  # first: the innermost hook, so a skipped layer never reaches it
                HookRegistry.check_if_exists_or_initialize(layer).register_hook(_Count(self._computed), _COUNTER)
        # Per denoiser call: every denoiser's layers are counted, but a call runs one denoiser's only.
        self.tally.layers //= len(modules)
        for denoiser in modules:
            HookRegistry.check_if_exists_or_initialize(denoiser).register_hook(_Count(self._called), _COUNTER)
        self.prepare(DEFAULT_STEPS)

    def _computed(self) -> None:
        self.tally.computed += 1

    def _called(self) -> None:
        self.tally.calls += 1

    def prepare(self, steps: int) -> None:
        """Reset the tally; (re)configure the hooks when the cache depends on the step count (accelerator thread)."""
        self.tally.reset()
        if self.steps is not None and (self.config.cache not in PER_STEP_COUNT or steps == self.steps):
            return
        for denoiser in self.denoisers:
            if self.steps is not None:
                denoiser.disable_cache()
            denoiser.enable_cache(CACHES[self.config.cache](self.config, self.family, denoiser.dtype, steps))
        self.steps = steps


@contextmanager
def counted(cache: DenoiserCache | None, steps: int, control: StepObserver | None) -> Iterator[None]:
    """Around one pipeline call of `steps` denoising steps: the cache readied, then what it skipped told to
    `control`."""
    if cache is None:
        yield
        return
    cache.prepare(max(1, steps))
    yield
    if control is not None:
        control.cache_skipped(cache.tally.skipped, cache.tally.total)


@functools.cache
def names_contexts(pipeline_class: type[DiffusionPipeline]) -> bool:
    """Whether a diffusers pipeline names a cache context around its transformer calls (FLUX.1 text-to-image,
    Qwen-Image and FLUX.2 [klein] do; FLUX.1's image-to-image and inpainting, FLUX.2 [dev] and Kontext do not)."""
    try:
        return "cache_context(" in inspect.getsource(pipeline_class.__call__)
    except (OSError, TypeError):
        return False


def context(cache: DenoiserCache | None, pipeline: DiffusionPipeline, task: str | None) -> AbstractContextManager:
    """The cache context a pipeline that sets none needs (the cache hooks keep their state per context): its
    calls share one, as a text-to-image pipeline's conditional calls do."""
    if cache is None or names_contexts(type(pipeline)):
        return nullcontext()
    return pipeline.transformer.cache_context("cond")


def check_family(config: ServerConfig, families: Sequence[str]) -> None:
    """--cache where no served family takes it is a start-up error; beside one that does, the others run
    without it (and the log says so)."""
    if config.cache == "none":
        return
    uncached = [family for family in families if config.cache not in CACHE_SUPPORT.get(family, ())]
    if len(uncached) < len(families):
        for family in uncached:
            logger.info("--cache %s applies to the Wan/FLUX model; %s runs without it", config.cache, family)
        return
    if uncached == ["sdxl"]:
        raise ConfigError(
            f"--cache {config.cache}: caches the FLUX and Wan transformers; SDXL's UNet has no cache hooks "
            "(use --cache none, or --compile for SDXL)"
        )
    if uncached:
        family = uncached[0]
        supported = CACHE_SUPPORT.get(family, ())
        instead = f"use --cache {' or '.join(supported)}" if supported else "use --cache none, or --compile"
        raise ConfigError(
            f"--cache {config.cache}: diffusers' hooks for it do not run on {family}'s transformer ({instead})"
        )


def apply_cache(pipelines: Iterable[DiffusionPipeline], family: str, config: ServerConfig) -> DenoiserCache | None:
    """The family's denoisers with --cache's hooks and skip counters; None with --cache none."""
    if config.cache not in CACHE_SUPPORT.get(family, ()):
        return None
    cache = DenoiserCache(denoisers(pipelines), family, config)
    logger.info("--cache %s on %s (%d attention layers counted per step)", config.cache, family, cache.tally.layers)
    return cache
