"""LoRA adapters chosen per request, loaded through diffusers' own loaders (which read both the diffusers/PEFT
and the kohya/A1111 layouts) and switched between requests on the accelerator thread.

Two ways to hold them:
- eager: each adapter is a named PEFT adapter in the pipeline's modules; a request activates its adapters
  with their scales (`set_weights_and_activate_adapters`) and a request without any turns the LoRA layers
  off, so it runs the base layers alone. At most --max_loaded_loras stay loaded, the least recently used
  is deleted first.
- --compile: the denoiser holds --max_loras_per_request fixed slots, made before compiling with diffusers'
  `enable_lora_hotswap` (ranks padded to --max_lora_rank, scales as tensors); an adapter's denoiser
  weights are hot-swapped into a slot and its scale is written into the slot's scale tensors, so the
  compiled graph never changes. Text encoders are not compiled: their part stays a named adapter.
A failed load removes whatever it added, so the next request finds the modules as they were.
It is one module because both ways share the loading, the clean-up and the checks of what was loaded.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import tempfile
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import DiffusionPipeline
from diffusers.utils.peft_utils import delete_adapter_layers, set_adapter_layers, set_weights_and_activate_adapters
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors import safe_open
from safetensors.torch import save_file

from ..api.loras import LORA_NAME, LoraChoice
from ..api.request import GenerationRequest
from ..config import ServerConfig
from ..errors import ConfigError, RequestError
from .lora_catalog import FAMILY_TITLES, AdapterInfo, LoraCatalog

logger = logging.getLogger("kserve.diffusion")
TEXT_ENCODER_PREFIXES = ("lora_te", "text_encoder", "te_", "te1_", "te2_")  # both layouts' text-encoder keys
SLOT = "slot{}"


def _lora_modules(module: torch.nn.Module, adapter: str) -> list[tuple[str, BaseTunerLayer]]:
    """(name, layer) of every LoRA layer of `module` that holds `adapter`."""
    return [
        (name, layer)
        for name, layer in module.named_modules()
        if isinstance(layer, BaseTunerLayer) and adapter in getattr(layer, "lora_A", {})
    ]


def _has_adapter(module: torch.nn.Module, adapter: str) -> bool:
    return adapter in (getattr(module, "peft_config", None) or {})


def _remove(module: torch.nn.Module, adapter: str) -> None:
    """Delete `adapter` from one module (a diffusers model or a transformers text encoder)."""
    if hasattr(module, "delete_adapters") and _has_adapter(module, adapter):
        module.delete_adapters([adapter])
    elif _lora_modules(module, adapter) or _has_adapter(module, adapter):
        delete_adapter_layers(module, adapter)


def _reason(exc: Exception) -> str:
    """A loader's exception as a short reason (shape mismatches say which layer)."""
    text = " ".join(str(exc).split())
    if "size mismatch" in text:
        return "its layer shapes do not match this model (" + text[text.find("size mismatch") :][:200] + ")"
    return f"{type(exc).__name__}: {text[:240]}"


@dataclass
class Activation:
    """What one request's activation did, for the metrics and the log line."""

    loaded: list[str] = field(default_factory=list)  # read from disk now
    cached: list[str] = field(default_factory=list)  # already loaded


class _PartFiles:
    """A split adapter: its denoiser keys and its text-encoder keys as two files (metadata kept), so each part
    goes through diffusers' loader on its own (the denoiser hot-swapped, the text encoders as named adapters)."""

    def __init__(self, scratch: Path, name: str, path: Path):
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 - not a dict
        encoder = {key: value for key, value in tensors.items() if key.startswith(TEXT_ENCODER_PREFIXES)}
        denoiser = {key: value for key, value in tensors.items() if key not in encoder}
        self.denoiser = self._write(scratch / f"{name}.denoiser.safetensors", denoiser, metadata)
        self.text_encoders = self._write(scratch / f"{name}.text.safetensors", encoder, metadata)

    @staticmethod
    def _write(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path | None:
        if not tensors:
            return None
        save_file({key: value.contiguous() for key, value in tensors.items()}, str(path), metadata=metadata)
        return path

    def remove(self) -> None:
        for path in (self.denoiser, self.text_encoders):
            if path is not None:
                path.unlink(missing_ok=True)


class LoraAdapters:
    """The adapters of one loaded pipeline family: checked at validation, activated on the accelerator thread."""

    def __init__(
        self,
        pipeline: DiffusionPipeline,
        family: str,
        catalog: LoraCatalog,
        max_loaded: int,
        slots: HotswapSlots | None = None,
        refused: str | None = None,
    ):
        self.pipeline = pipeline
        self.refused = refused  # why this model takes no adapters at all (a 400 for any request naming one)
        self.family = family
        self.catalog = catalog
        self.max_loaded = max_loaded
        self.slots = slots
        self.modules = {
            name: getattr(pipeline, name)
            for name in pipeline._lora_loadable_modules  # noqa: SLF001 - diffusers' list of LoRA-loadable parts
            if getattr(pipeline, name, None) is not None
        }
        self.loaded: OrderedDict[str, str] = OrderedDict()  # adapter name -> PEFT adapter name, oldest use first
        self.parts: dict[str, _PartFiles] = {}
        self._scratch = tempfile.TemporaryDirectory(prefix="kserve-diffusion-lora-") if slots else None
        self._serial = 0

    def check(self, choices: Sequence[LoraChoice]) -> None:
        """Validation (event loop): every adapter exists, is a LoRA file, and is not for another family."""
        if self.refused and choices:
            raise RequestError("loras", self.refused)
        for choice in choices:
            info = self.catalog.info(choice.name)
            if info.family is not None and info.family != self.family:
                raise RequestError(
                    "loras",
                    f"adapter {choice.name!r} is made for {FAMILY_TITLES[info.family]}, this model is "
                    f"{FAMILY_TITLES[self.family]}",
                )
            if self.slots is not None:
                self.slots.check(info)

    def activate(self, choices: Sequence[LoraChoice]) -> Activation:
        """Make exactly `choices` active with their scales (none: the base model alone); accelerator thread."""
        done = Activation()
        wanted = [choice.name for choice in choices]
        for name in wanted:
            if name in self.loaded:
                self.loaded.move_to_end(name)
                done.cached.append(name)
            else:
                self._make_room(keep=wanted)
                self._load(name)
                done.loaded.append(name)
        scales = [(self.loaded[choice.name], choice.scale) for choice in choices]
        for component, module in self.modules.items():
            if self.slots is not None and component == self.slots.component:
                continue
            present = [(adapter, scale) for adapter, scale in scales if _has_adapter(module, adapter)]
            if present:
                set_adapter_layers(module, enabled=True)
                set_weights_and_activate_adapters(module, [a for a, _ in present], [s for _, s in present])
            elif any(isinstance(layer, BaseTunerLayer) for layer in module.modules()):
                set_adapter_layers(module, enabled=False)  # the base layers alone, exactly
        if self.slots is not None:
            self.slots.activate([(choice.name, self.parts[choice.name], choice.scale) for choice in choices])
        return done

    @contextlib.contextmanager
    def suspended(self, component: str) -> Iterator[None]:
        """`component`'s LoRA layers off for a while (SDXL's refiner shares the base's text_encoder_2)."""
        module = self.modules.get(component)
        layers = [layer for layer in module.modules() if isinstance(layer, BaseTunerLayer)] if module else []
        before = [layer.disable_adapters for layer in layers]
        for layer in layers:
            layer.enable_adapters(False)
        try:
            yield
        finally:
            for layer, disabled in zip(layers, before, strict=True):
                layer.enable_adapters(not disabled)

    def _make_room(self, keep: Sequence[str]) -> None:
        while len(self.loaded) >= self.max_loaded:
            victim = next((name for name in self.loaded if name not in keep), None)
            if victim is None:
                return
            self._unload(victim)

    def _unload(self, name: str) -> None:
        adapter = self.loaded.pop(name)
        for module in self.modules.values():
            _remove(module, adapter)
        part = self.parts.pop(name, None)
        if part is not None:
            part.remove()
        if self.slots is not None:
            self.slots.forget(name)
        logger.info("LoRA adapter %s unloaded (least recently used)", name)

    def _load(self, name: str) -> None:
        """Load one adapter with diffusers' loader; anything it cannot take is a 400 and leaves no trace."""
        info = self.catalog.info(name)
        self._serial += 1
        adapter = f"lora{self._serial}"  # PEFT adapter names become module keys: no dots allowed
        slotted = 0  # layers of the adapter's denoiser part found in the hot-swap slots
        try:
            if self.slots is None:
                self.pipeline.load_lora_weights(str(info.path), adapter_name=adapter)
            else:
                assert self._scratch is not None
                part = _PartFiles(Path(self._scratch.name), adapter, info.path)
                self.parts[name] = part
                if part.text_encoders is not None:
                    self.pipeline.load_lora_weights(str(part.text_encoders), adapter_name=adapter)
                if part.denoiser is not None:
                    slotted = self.slots.probe(part.denoiser)
            self._check_injected(info, adapter, slotted)
        except Exception as exc:
            for module in self.modules.values():
                _remove(module, adapter)
            part = self.parts.pop(name, None)
            if part is not None:
                part.remove()
            if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
                raise  # the worker frees memory and answers 507, as for a generation
            reason = exc.args[0] if isinstance(exc, _NotForThisModel) else _reason(exc)
            raise RequestError(
                "loras", f"adapter {name!r} cannot be loaded into this {FAMILY_TITLES[self.family]} model: {reason}"
            ) from None
        self.loaded[name] = adapter
        logger.info("LoRA adapter %s loaded (%s layout, rank %s)", name, info.layout, info.rank)

    def _check_injected(self, info: AdapterInfo, adapter: str, slotted: int) -> None:
        """diffusers skips keys that match no layer with a warning: an adapter for another architecture could
        load nothing, or only part of itself. Every LoRA matrix of the file must have found its layer."""
        found = slotted + sum(len(_lora_modules(module, adapter)) for module in self.modules.values())
        if found < info.layers:
            what = "none" if found == 0 else f"only {found}"
            raise _NotForThisModel(
                f"{what} of its {info.layers} LoRA layers match this model's layers (made for another model?)"
            )


class _NotForThisModel(Exception):
    """An adapter whose layers are not this model's."""


class _NoSlots(Exception):
    """--compile without an adapter of the family at start-up: nothing to size the slots from."""


class HotswapSlots:
    """--compile: fixed adapter slots in the denoiser, filled by hot-swapping weights (no recompilation).

    A swap must never fail half-way (diffusers then deletes the slot: the compiled model would change), so an
    adapter's denoiser part is first loaded into a shape-only copy of the denoiser on the meta device, through
    the same diffusers loader: that checks its layer shapes, and tells which layers and ranks it trains.
    """

    def __init__(self, pipeline: DiffusionPipeline, component: str, count: int, rank: int):
        self.pipeline = pipeline
        self.component = component
        self.module: torch.nn.Module = getattr(pipeline, component)
        self.rank = rank
        self.names: list[str | None] = [None] * count  # adapter name in each slot
        self.base_scales: list[list[tuple[BaseTunerLayer, float]]] = [[] for _ in range(count)]
        self.targets: set[str] = set()
        # A pipeline view whose denoiser is a copy without weights (meta device): loading into it costs nothing.
        self._shape_only = copy.copy(pipeline)
        with torch.device("meta"):
            setattr(self._shape_only, component, type(self.module).from_config(self.module.config))

    def trained_layers(self, path: Path) -> dict[str, int]:
        """The denoiser layers an adapter's denoiser part trains, with their ranks; the loader's exception for
        an adapter that does not fit this architecture."""
        shape_only = getattr(self._shape_only, self.component)
        try:
            self._shape_only.load_lora_weights(str(path), adapter_name="probe")
            return {
                name: int(layer.lora_A["probe"].weight.shape[0]) for name, layer in _lora_modules(shape_only, "probe")
            }
        finally:
            _remove(shape_only, "probe")

    @classmethod
    def prepare(
        cls, pipeline: DiffusionPipeline, family: str, catalog: LoraCatalog, count: int, rank: int
    ) -> HotswapSlots:
        """Before compiling: find the layers the folder's adapters train, then load that many zero slots."""
        component = "unet" if hasattr(pipeline, "unet") else "transformer"
        slots = cls(pipeline, component, count, rank)
        targets: set[str] = set()
        with tempfile.TemporaryDirectory(prefix="kserve-diffusion-lora-scan-") as scratch:
            for name in catalog.names():
                try:
                    info = catalog.info(name)
                except RequestError:
                    continue
                if info.family not in (None, family):
                    continue
                part = _PartFiles(Path(scratch), "scan", info.path)
                try:
                    if part.denoiser is not None:
                        targets.update(slots.trained_layers(part.denoiser))
                except Exception as exc:  # a broken adapter is the request's 400 later, not a startup failure
                    logger.warning("--compile: LoRA adapter %s left out of the slots: %s", name, _reason(exc))
                finally:
                    part.remove()
        if not targets:
            raise _NoSlots(
                f"--compile: no {FAMILY_TITLES[family]} adapter was in --lora_dir at start-up, so the compiled model "
                "has no adapter slots (restart the server with one in the folder)"
            )
        slots.targets = targets
        layers = dict(slots.module.named_modules())
        placeholder = {}
        for layer_name in sorted(targets):
            linear = layers[layer_name]
            placeholder[f"{component}.{layer_name}.lora_A.weight"] = torch.zeros(rank, linear.in_features)
            placeholder[f"{component}.{layer_name}.lora_B.weight"] = torch.zeros(linear.out_features, rank)
        pipeline.enable_lora_hotswap(target_rank=rank)
        for index in range(count):  # each slot its own tensors: the loader may keep (not copy) what it is given
            own = {key: tensor.clone() for key, tensor in placeholder.items()}
            pipeline.load_lora_weights(own, adapter_name=SLOT.format(index))
        names = [SLOT.format(index) for index in range(count)]
        for _, layer in _lora_modules(slots.module, names[0]):
            layer.set_adapter(names)  # every slot always on: a request's choice is only its scales
            for slot in names:  # scales as tensors, 0 until used (diffusers converts the first slot's only)
                layer.scaling[slot] = torch.zeros((), device=layer.lora_A[slot].weight.device)
        logger.info("--compile: %d LoRA slots of rank %d on %d %s layers", count, rank, len(targets), component)
        return slots

    def check(self, info: AdapterInfo) -> None:
        """A rank over --max_lora_rank cannot be swapped into the padded slots."""
        if info.rank is not None and info.rank > self.rank:
            raise RequestError(
                "loras", f"adapter {info.name!r} has rank {info.rank}, above --max_lora_rank {self.rank} (--compile)"
            )

    def probe(self, path: Path) -> int:
        """Check that a denoiser part fits the slots (shapes, layers, ranks) without touching them; returns how
        many layers it trains."""
        trained = self.trained_layers(path)
        outside = sorted(set(trained) - self.targets)
        if outside:
            raise _NotForThisModel(
                f"it trains {len(outside)} layer(s) the compiled model has no slot for, e.g. {outside[0]} "
                "(--compile fixes the slots from the adapters in --lora_dir at start-up: restart the server to "
                "include it)"
            )
        highest = max(trained.values(), default=0)
        if highest > self.rank:
            raise _NotForThisModel(f"its rank {highest} is above --max_lora_rank {self.rank} (--compile)")
        return len(trained)

    def _swap(self, index: int, path: Path, name: str | None) -> None:
        slot = SLOT.format(index)
        try:
            self.pipeline.load_lora_weights(str(path), adapter_name=slot, hotswap=True)
        except Exception:
            # A swap that failed half-way may have written some weights and scales: the slot is free and silent.
            self.names[index] = None
            self.base_scales[index] = []
            for _, layer in _lora_modules(self.module, slot):
                layer.scaling[slot].fill_(0.0)
            raise
        self.names[index] = name
        # The scale the swap wrote (the adapter's alpha / rank) is the base a request's scale multiplies.
        self.base_scales[index] = [(layer, float(layer.scaling[slot])) for _, layer in _lora_modules(self.module, slot)]
        for layer, _ in self.base_scales[index]:
            layer.scaling[slot].fill_(0.0)

    def activate(self, chosen: Sequence[tuple[str, Any, float]]) -> None:
        """Swap the chosen adapters' denoiser parts into slots (one already in a slot stays there) and write each
        slot's scale; unused slots get scale 0."""
        wanted = [(name, part, scale) for name, part, scale in chosen if part.denoiser is not None]
        keep = {name for name, _, _ in wanted}
        placed: dict[str, int] = {name: self.names.index(name) for name in keep if name in self.names}
        free = [index for index, name in enumerate(self.names) if name not in keep]
        for name, part, _ in wanted:
            if name not in placed:
                index = free.pop(0)
                self._swap(index, part.denoiser, name)
                placed[name] = index
        scale_of = {placed[name]: scale for name, _, scale in wanted}
        for index, layers in enumerate(self.base_scales):
            factor = scale_of.get(index, 0.0)
            for layer, base in layers:
                layer.scaling[SLOT.format(index)].fill_(base * factor)

    def forget(self, name: str) -> None:
        """An evicted adapter's slot is free again (its weights stay until overwritten, at scale 0)."""
        if name in self.names:
            index = self.names.index(name)
            self.names[index] = None
            for layer, _ in self.base_scales[index]:
                layer.scaling[SLOT.format(index)].fill_(0.0)


def open_adapters(pipeline: DiffusionPipeline, family: str, config: ServerConfig) -> LoraAdapters | None:
    """The adapters of a placed, not yet compiled pipeline when --lora_dir is set: hot-swap slots with
    --compile, then --preload_loras loaded (a bad one stops the start, naming it and why)."""
    if config.lora_dir is None:
        if config.preload_loras:
            raise ConfigError("--preload_loras: needs --lora_dir")
        return None
    if config.fuse_qkv:
        raise ConfigError(
            "--fuse_qkv with --lora_dir: fused projections replace the layers LoRA adapters train; use one of them"
        )
    catalog = LoraCatalog(config.lora_dir)
    preload = _preloaded(catalog, family, config)  # checked before anything is loaded
    slots = None
    if config.compile != "none":
        try:
            slots = HotswapSlots.prepare(pipeline, family, catalog, config.max_loras_per_request, config.max_lora_rank)
        except _NoSlots as exc:
            if preload:
                raise ConfigError(f"--preload_loras: {exc}") from None
            logger.warning("%s", exc)
            return LoraAdapters(pipeline, family, catalog, config.max_loaded_loras, refused=str(exc))
    adapters = LoraAdapters(pipeline, family, catalog, config.max_loaded_loras, slots)
    for name in preload:
        try:
            adapters.check([LoraChoice(name=name)])
            adapters.activate([LoraChoice(name=name)])
        except RequestError as exc:
            raise ConfigError(f"--preload_loras: {str(exc).removeprefix('loras: ')}") from None
    if preload:
        adapters.activate([])
        logger.info("LoRA adapters preloaded: %s", ", ".join(preload))
    logger.info("LoRA adapters from %s: %d found", catalog.root, len(catalog.names()))
    return adapters


def _preloaded(catalog: LoraCatalog, family: str, config: ServerConfig) -> list[str]:
    """The --preload_loras names this family loads (a combined server's other model loads its own)."""
    names = [name.strip() for name in (config.preload_loras or "").split(",") if name.strip()]
    if len(names) > config.max_loaded_loras:
        raise ConfigError(
            f"--preload_loras: {len(names)} adapters, more than --max_loaded_loras {config.max_loaded_loras}"
        )
    served = {config.model_type, "wan"} if config.video_model_id else {config.model_type}
    mine = []
    for name in names:
        if not LORA_NAME.fullmatch(name):
            raise ConfigError(f"--preload_loras: {name!r} is not an adapter name")
        try:
            made_for = catalog.info(name).family
        except RequestError as exc:
            raise ConfigError(f"--preload_loras: {str(exc).removeprefix('loras: ')}") from None
        if not (made_for in served and made_for != family):
            mine.append(name)
    return mine


def activate(adapters: LoraAdapters | None, request: GenerationRequest) -> Activation | None:
    """Make the request's adapters active (none: the base model alone); accelerator thread."""
    return adapters.activate(request.loras or ()) if adapters is not None else None


def check(adapters: LoraAdapters | None, request: GenerationRequest) -> None:
    """Validation of `loras` against what this server has."""
    if not request.loras:
        return
    if adapters is None:
        raise RequestError("loras", "this server has no adapters (start it with --lora_dir DIR)")
    adapters.check(request.loras)
