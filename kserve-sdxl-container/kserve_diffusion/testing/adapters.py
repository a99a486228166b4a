"""Tiny random LoRA adapters for the tiny pipelines, in the two layouts people download.

- diffusers / PEFT: what `save_lora_weights` writes (`unet.<module>.lora_A.weight`, `transformer.<...>`),
  as one .safetensors file or as a folder holding `pytorch_lora_weights.safetensors`;
- kohya / A1111 (sd-scripts, musubi-tuner): `lora_unet_<module_with_underscores>.lora_down.weight`,
  `.lora_up.weight` and `.alpha`, in the original block names of FLUX and Wan, with sd-scripts' metadata.

Each adapter's matrices are drawn from its own seed and are large enough to change the output visibly,
small enough to keep it finite.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from diffusers import DiffusionPipeline
from safetensors.torch import save_file

# Which linear layers each family's adapters train: per component, patterns that end a module's name.
TARGETS: dict[str, dict[str, tuple[str, ...]]] = {
    "sdxl": {
        "unet": ("to_q", "to_k", "to_v", "to_out.0"),
        # all four: diffusers tells the kohya text-encoder layout apart by its out_proj keys
        "text_encoder": ("q_proj", "k_proj", "v_proj", "out_proj"),
        "text_encoder_2": ("q_proj", "k_proj", "v_proj", "out_proj"),
    },
    # FLUX: the layers sd-scripts names one to one (its fused qkv layers assume the 3072-wide model).
    "flux": {
        "transformer": (
            "attn.to_out.0",
            "attn.to_add_out",
            "ff.net.0.proj",
            "ff.net.2",
            r"single_transformer_blocks\.\d+\.proj_out",
        ),
        "text_encoder": ("q_proj", "k_proj", "v_proj", "out_proj"),
    },
    # Wan: every layer musubi-tuner trains (its converter expects all of them in every block).
    "wan": {
        "transformer": (
            *(f"attn{i}.{name}" for i in (1, 2) for name in ("to_q", "to_k", "to_v", "to_out.0")),
            "ffn.net.0.proj",
            "ffn.net.2",
        ),
    },
}
# This year's families: the attention and MLP projections diffusers' trainers target (diffusers layout only).
TARGETS.update(
    {
        "qwen_image": {
            "transformer": (
                *(f"attn.{name}" for name in ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj")),
                "img_mlp.net.2",
                "txt_mlp.net.2",
            )
        },
        "flux2": {"transformer": ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.to_qkv_mlp_proj")},
        "z_image": {"transformer": ("attention.to_q", "attention.to_k", "attention.to_v", "attention.to_out.0")},
    }
)
KOHYA_BASE_MODEL = {"sdxl": "sdxl_base_v1-0", "flux": "flux1", "wan": "wan2.1"}
WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # the file name save_lora_weights writes


def _targets(module: torch.nn.Module, names: Iterable[str]) -> dict[str, torch.nn.Linear]:
    """The linear layers of `module` whose qualified name ends with one of the patterns `names`."""
    patterns = [re.compile(rf"(?:.+\.)?{name}") for name in names]
    return {
        qualified: child
        for qualified, child in module.named_modules()
        if isinstance(child, torch.nn.Linear) and any(pattern.fullmatch(qualified) for pattern in patterns)
    }


def lora_layers(pipeline: DiffusionPipeline, family: str, rank: int = 4, seed: int = 0) -> dict[str, dict]:
    """Random LoRA matrices for `family`'s target layers of `pipeline`: component -> {key: tensor}, the keys as
    PEFT names them (`<module>.lora_A.weight`)."""
    generator = torch.Generator().manual_seed(seed)
    layers: dict[str, dict] = {}
    for component, names in TARGETS[family].items():
        module = getattr(pipeline, component, None)
        if module is None:  # e.g. the SDXL refiner has no first text encoder
            continue
        state = {}
        for name, linear in sorted(_targets(module, names).items()):
            down = torch.randn(rank, linear.in_features, generator=generator) / linear.in_features**0.5
            up = torch.randn(linear.out_features, rank, generator=generator) * 0.5
            state[f"{name}.lora_A.weight"] = down.contiguous()
            state[f"{name}.lora_B.weight"] = up.contiguous()
        layers[component] = state
    return layers


def save_diffusers(pipeline: DiffusionPipeline, layers: dict[str, dict], folder: Path) -> Path:
    """FOLDER/pytorch_lora_weights.safetensors, written by the pipeline's own save_lora_weights."""
    arguments = {f"{component}_lora_layers": state for component, state in layers.items()}
    type(pipeline).save_lora_weights(str(folder), safe_serialization=True, **arguments)
    return folder / WEIGHT_NAME


def save_diffusers_file(pipeline: DiffusionPipeline, layers: dict[str, dict], path: Path) -> Path:
    """PATH (.safetensors), the file save_lora_weights writes, as a lone adapter file rather than in a folder."""
    written = save_diffusers(pipeline, layers, path.with_suffix(".tmp"))
    written.rename(path)
    written.parent.rmdir()
    return path


def _sdxl_kohya(component: str, module: str) -> str:
    prefix = {"unet": "lora_unet", "text_encoder": "lora_te1", "text_encoder_2": "lora_te2"}[component]
    return f"{prefix}_{module.replace('.', '_')}"


_FLUX_KOHYA = (
    (r"transformer_blocks\.(\d+)\.attn\.to_out\.0", r"double_blocks_\1_img_attn_proj"),
    (r"transformer_blocks\.(\d+)\.attn\.to_add_out", r"double_blocks_\1_txt_attn_proj"),
    (r"transformer_blocks\.(\d+)\.ff\.net\.0\.proj", r"double_blocks_\1_img_mlp_0"),
    (r"transformer_blocks\.(\d+)\.ff\.net\.2", r"double_blocks_\1_img_mlp_2"),
    (r"single_transformer_blocks\.(\d+)\.proj_out", r"single_blocks_\1_linear2"),
)
_WAN_KOHYA = {
    "attn1.to_q": "self_attn_q",
    "attn1.to_k": "self_attn_k",
    "attn1.to_v": "self_attn_v",
    "attn1.to_out.0": "self_attn_o",
    "attn2.to_q": "cross_attn_q",
    "attn2.to_k": "cross_attn_k",
    "attn2.to_v": "cross_attn_v",
    "attn2.to_out.0": "cross_attn_o",
    "ffn.net.0.proj": "ffn_0",
    "ffn.net.2": "ffn_2",
}


def _flux_kohya(component: str, module: str) -> str:
    if component == "text_encoder":
        return f"lora_te1_{module.replace('.', '_')}"
    for pattern, replacement in _FLUX_KOHYA:
        if re.fullmatch(pattern, module):
            return "lora_unet_" + re.sub(pattern, replacement, module)
    raise ValueError(f"no sd-scripts name for FLUX module {module}")


def _wan_kohya(component: str, module: str) -> str:
    block, rest = re.fullmatch(r"blocks\.(\d+)\.(.+)", module).groups()  # type: ignore[union-attr]
    return f"lora_unet_blocks_{block}_{_WAN_KOHYA[rest]}"


KOHYA_NAMES: dict[str, Callable[[str, str], str]] = {"sdxl": _sdxl_kohya, "flux": _flux_kohya, "wan": _wan_kohya}


def save_kohya(family: str, layers: dict[str, dict], path: Path, alpha: float | None = None) -> Path:
    """PATH (.safetensors) in the kohya / A1111 layout, with sd-scripts' metadata (base model, rank)."""
    state: dict[str, torch.Tensor] = {}
    rank = 0
    for component, tensors in layers.items():
        for key, tensor in tensors.items():
            module, kind = key.rsplit(".lora_", 1)
            name = KOHYA_NAMES[family](component, module)
            state[f"{name}.{'lora_down' if kind.startswith('A') else 'lora_up'}.weight"] = tensor
            if kind.startswith("A"):
                rank = tensor.shape[0]
                state[f"{name}.alpha"] = torch.tensor(float(alpha if alpha is not None else rank))
    metadata = {"ss_base_model_version": KOHYA_BASE_MODEL[family], "ss_network_dim": str(rank)}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata=metadata)
    return path


def write_adapters(pipeline: DiffusionPipeline, family: str, folder: Path) -> list[Path]:
    """The demo and test set for `family` in `folder`: `<family>-style.safetensors` (diffusers, rank 4),
    `<family>-detail/` (a folder holding a diffusers file, rank 8) and `<family>-kohya.safetensors`
    (kohya layout, rank 4, alpha 2)."""
    folder.mkdir(parents=True, exist_ok=True)
    style = lora_layers(pipeline, family, rank=4, seed=1)
    style_file = save_diffusers_file(pipeline, style, folder / f"{family}-style.safetensors")
    detail = save_diffusers(pipeline, lora_layers(pipeline, family, rank=8, seed=2), folder / f"{family}-detail")
    if family not in KOHYA_NAMES:  # this year's families: adapters are published in diffusers' layout
        return [style_file, detail.parent]
    kohya = save_kohya(family, lora_layers(pipeline, family, rank=4, seed=3), folder / f"{family}-kohya.safetensors", 2)
    return [style_file, detail.parent, kohya]
