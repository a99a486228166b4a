"""The adapters in --lora_dir: names, safe paths, and what each file says about itself (family, rank).

A request names adapters; nothing it sends becomes a path by itself. A name is looked up among the
entries of the folder (`<name>.safetensors`, or `<name>/` holding one .safetensors file), and the file
it leads to must resolve inside the folder: a symlink pointing out is refused. Reading a file's header
(keys, shapes, metadata) costs no tensor reads; it tells the family apart before anything is loaded.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors import safe_open

from ..api.loras import LORA_NAME
from ..api.messages import shown
from ..errors import ConfigError, RequestError

logger = logging.getLogger("kserve.diffusion")
SUFFIX = ".safetensors"
PREFERRED_FILE = "pytorch_lora_weights.safetensors"  # what diffusers' save_lora_weights writes in a folder
SHOWN_NAMES = 10  # names listed in an unknown-name 400
FAMILY_TITLES = {
    "sdxl": "SDXL",
    "flux": "FLUX",
    "wan": "Wan",
    "qwen_image": "Qwen-Image",
    "flux2": "FLUX.2",
    "z_image": "Z-Image",
    "sd1": "Stable Diffusion 1.x",
    "sd2": "Stable Diffusion 2.x",
}
# sd-scripts' `ss_base_model_version` metadata, by prefix -> family.
BASE_MODEL_VERSIONS = (
    ("sdxl", "sdxl"),
    ("flux2", "flux2"),
    ("flux.2", "flux2"),
    ("flux", "flux"),
    ("wan", "wan"),
    ("qwen_image", "qwen_image"),
    ("qwen-image", "qwen_image"),
    ("z_image", "z_image"),
    ("z-image", "z_image"),
    ("sd_v1", "sd1"),
    ("sd_v2", "sd2"),
)
# Layer names only one family's transformer has (Qwen-Image's separate image/text MLPs, FLUX.2's fused single-block
# projection, Z-Image's refiners and `attention` blocks): checked before the shared block prefixes below, which
# FLUX.1, FLUX.2 and Qwen-Image all use.
KEY_PARTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("qwen_image", (".img_mlp.", ".txt_mlp.", ".img_mod.", ".txt_mod.")),
    ("flux2", (".to_qkv_mlp_proj.", "double_stream_modulation")),
    ("z_image", ("noise_refiner.", "context_refiner.", ".attention.to_q.", ".attention.to_out.")),
)
# Key prefixes (in both layouts) -> family, checked in order: FLUX's and Wan's block names first.
KEY_MARKS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("flux", ("lora_unet_double_blocks_", "lora_unet_single_blocks_", "transformer.single_transformer_blocks.")),
    ("flux", ("transformer.transformer_blocks.", "transformer_blocks.", "single_transformer_blocks.")),
    ("wan", ("lora_unet_blocks_", "diffusion_model.blocks.", "transformer.blocks.", "blocks.")),
    ("sdxl", ("lora_te2_", "text_encoder_2.")),
    ("sdxl", ("unet.", "lora_unet_down_blocks_", "lora_unet_up_blocks_", "lora_unet_mid_block_")),
    ("sdxl", ("lora_unet_input_blocks_", "lora_unet_output_blocks_", "lora_unet_middle_block_", "lora_te1_")),
)
DOWN_MARKS = (".lora_down.weight", ".lora_A.weight", ".lora_A.default.weight", "lora.down.weight")


@dataclass(frozen=True)
class AdapterInfo:
    """What an adapter file says about itself: its family and rank when they can be told, its layout."""

    name: str
    path: Path
    family: str | None
    rank: int | None
    layout: str  # "kohya" or "diffusers"
    layers: int  # LoRA layers (down matrices) in the file

    def describe(self) -> dict[str, Any]:
        """The listing entry of GET /v1/models/{name}/loras."""
        return {"name": self.name, "family": self.family, "rank": self.rank, "format": self.layout}


def _family(keys: list[str], metadata: dict[str, str]) -> str | None:
    version = metadata.get("ss_base_model_version", "").lower()
    for prefix, family in BASE_MODEL_VERSIONS:
        if version.startswith(prefix):
            return family
    for family, parts in KEY_PARTS:
        if any(part in key for key in keys for part in parts):
            return family
    for family, marks in KEY_MARKS:
        if any(key.startswith(marks) for key in keys):
            return family
    return None


def read_info(name: str, path: Path) -> AdapterInfo:
    """The header of an adapter file (no tensors read); a ValueError saying why it is not a LoRA adapter."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            keys = list(handle.keys())
            metadata = handle.metadata() or {}
            downs = [key for key in keys if key.endswith(DOWN_MARKS)]
            rank = handle.get_slice(downs[0]).get_shape()[0] if downs else None
    except Exception as exc:  # safetensors raises its own error types for broken headers
        raise ValueError(f"not a readable .safetensors file ({type(exc).__name__})") from None
    if not downs:
        raise ValueError("holds no LoRA matrices (no lora_down / lora_A keys)")
    layout = "kohya" if any(".lora_down." in key or key.startswith("lora_") for key in keys) else "diffusers"
    return AdapterInfo(name, path, _family(keys, metadata), int(rank) if rank else None, layout, len(downs))


class LoraCatalog:
    """The adapters of one folder, found by name; headers cached by (path, modification time)."""

    def __init__(self, folder: str):
        root = Path(folder).expanduser()
        if not root.is_dir():
            raise ConfigError(f"--lora_dir: {folder} is not a folder")
        self.root = root.resolve()
        self._infos: dict[tuple[Path, int], AdapterInfo] = {}
        self._names: tuple[int, list[str]] | None = None  # (the folder's mtime, its adapter names)

    def names(self) -> list[str]:
        """The names of the adapters in the folder, sorted (entries that are not adapters are left out); read
        again only when the folder changes (a request naming unknown adapters costs one stat)."""
        changed = self.root.stat().st_mtime_ns
        if self._names is None or self._names[0] != changed:
            self._names = (changed, self._scan())
        return list(self._names[1])

    def _scan(self) -> list[str]:
        found = []
        for entry in sorted(self.root.iterdir()):
            name = entry.name[: -len(SUFFIX)] if entry.name.endswith(SUFFIX) else entry.name
            if LORA_NAME.fullmatch(name) and self._file(entry) is not None:
                found.append(name)
        return sorted(set(found))

    def _file(self, entry: Path) -> Path | None:
        """The adapter file an entry leads to, inside the folder; None when there is none."""
        if entry.name.endswith(SUFFIX):
            candidate = entry
        elif entry.is_dir():
            files = sorted(entry.glob(f"*{SUFFIX}"))
            preferred = [file for file in files if file.name == PREFERRED_FILE]
            if not preferred and len(files) != 1:
                return None
            candidate = (preferred or files)[0]
        else:
            return None
        resolved = candidate.resolve()
        if not resolved.is_file() or not resolved.is_relative_to(self.root):
            return None  # a symlink leading out of the folder is never followed
        return resolved

    def find(self, name: str) -> Path:
        """The file of adapter `name`; a 400 listing some available names when there is none."""
        for entry in (self.root / f"{name}{SUFFIX}", self.root / name):
            if entry.exists() or entry.is_symlink():
                path = self._file(entry)
                if path is not None:
                    return path
                if entry.is_symlink() and not entry.resolve().is_relative_to(self.root):
                    raise RequestError("loras", f"adapter {name!r} leads outside --lora_dir and is refused")
        names = self.names()
        listed = ", ".join(names[:SHOWN_NAMES]) + (f" and {len(names) - SHOWN_NAMES} more" if len(names) > 10 else "")
        raise RequestError(
            "loras", f"no adapter named {shown(name)} (available: {listed or 'none, the folder is empty'})"
        )

    def info(self, name: str) -> AdapterInfo:
        """The header of adapter `name` (a 400 when it is missing or not an adapter)."""
        path = self.find(name)
        key = (path, path.stat().st_mtime_ns)
        if key not in self._infos:
            try:
                self._infos[key] = read_info(name, path)
            except ValueError as exc:
                raise RequestError("loras", f"adapter {name!r} cannot be used: {exc}") from None
        return self._infos[key]

    def listing(self) -> list[dict[str, Any]]:
        """Every adapter with its family, rank and layout (an unreadable one says why)."""
        entries = []
        for name in self.names():
            try:
                entries.append(self.info(name).describe())
            except RequestError as exc:
                entries.append({"name": name, "family": None, "rank": None, "error": str(exc).split(": ", 1)[-1]})
        return entries
