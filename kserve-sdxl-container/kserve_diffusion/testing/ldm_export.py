"""Write diffusers components in their original checkpoint key layouts: SDXL (LDM / SGM) and the
FLUX transformer (Black Forest Labs').

This is the inverse of diffusers' single-file conversion, so that models can be served through the
real `from_single_file` loading path exactly as a downloaded `sd_xl_base_1.0.safetensors` or
`flux1-dev.safetensors` would be. Only the layouts these models use are covered.
"""

from __future__ import annotations

import torch
from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."

# diffusers resnet names -> LDM names (UNet)
_UNET_RESNET_RENAMES = (
    ("norm1", "in_layers.0"),
    ("conv1", "in_layers.2"),
    ("norm2", "out_layers.0"),
    ("conv2", "out_layers.3"),
    ("time_emb_proj", "emb_layers.1"),
    ("conv_shortcut", "skip_connection"),
)
_VAE_ATTENTION_RENAMES = (
    ("group_norm.", "norm."),
    ("to_q.", "q."),
    ("to_k.", "k."),
    ("to_v.", "v."),
    ("to_out.0.", "proj_out."),
)


def _rename(suffix: str, renames: tuple[tuple[str, str], ...]) -> str:
    for old, new in renames:
        suffix = suffix.replace(old, new)
    return suffix


def unet_to_ldm(state: dict[str, torch.Tensor], layers_per_block: int) -> dict[str, torch.Tensor]:
    """Map a diffusers UNet2DConditionModel state dict to `model.diffusion_model.*` keys."""
    top_level = {
        **DIFFUSERS_TO_LDM_MAPPING["unet"]["layers"],
        **DIFFUSERS_TO_LDM_MAPPING["unet"]["addition_embed_type"],
    }
    per_block = layers_per_block + 1
    up_blocks_with_attention = {
        int(key.split(".")[1]) for key in state if key.startswith("up_blocks.") and ".attentions." in key
    }
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        parts = key.split(".")
        if key in top_level:
            ldm = top_level[key]
        elif parts[0] == "down_blocks":
            block, kind = int(parts[1]), parts[2]
            if kind == "downsamplers":
                ldm = f"input_blocks.{(block + 1) * per_block}.0.op.{parts[-1]}"
            else:
                layer = int(parts[3])
                index = 1 + block * per_block + layer
                rest = ".".join(parts[4:])
                if kind == "resnets":
                    ldm = f"input_blocks.{index}.0.{_rename(rest, _UNET_RESNET_RENAMES)}"
                else:
                    ldm = f"input_blocks.{index}.1.{rest}"
        elif parts[0] == "mid_block":
            kind, layer, rest = parts[1], int(parts[2]), ".".join(parts[3:])
            if kind == "resnets":
                ldm = f"middle_block.{2 * layer}.{_rename(rest, _UNET_RESNET_RENAMES)}"
            else:
                ldm = f"middle_block.1.{rest}"
        elif parts[0] == "up_blocks":
            block, kind = int(parts[1]), parts[2]
            if kind == "upsamplers":
                slot = 2 if block in up_blocks_with_attention else 1
                ldm = f"output_blocks.{block * per_block + layers_per_block}.{slot}.conv.{parts[-1]}"
            else:
                layer = int(parts[3])
                index = block * per_block + layer
                rest = ".".join(parts[4:])
                if kind == "resnets":
                    ldm = f"output_blocks.{index}.0.{_rename(rest, _UNET_RESNET_RENAMES)}"
                else:
                    ldm = f"output_blocks.{index}.1.{rest}"
        else:
            raise ValueError(f"no LDM name known for UNet key {key!r}")
        out[UNET_PREFIX + ldm] = tensor
    return out


def vae_to_ldm(state: dict[str, torch.Tensor], num_blocks: int) -> dict[str, torch.Tensor]:
    """Map a diffusers AutoencoderKL state dict to `first_stage_model.*` keys."""
    top_level = DIFFUSERS_TO_LDM_MAPPING["vae"]
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        parts = key.split(".")
        coder = parts[0]
        if key in top_level:
            ldm = top_level[key]
        elif parts[1] in ("down_blocks", "up_blocks"):
            block = int(parts[2])
            # LDM numbers decoder blocks from the lowest resolution up; diffusers the other way.
            ldm_block = block if parts[1] == "down_blocks" else num_blocks - 1 - block
            stage = "down" if parts[1] == "down_blocks" else "up"
            if parts[3] == "resnets":
                rest = ".".join(parts[5:]).replace("conv_shortcut", "nin_shortcut")
                ldm = f"{coder}.{stage}.{ldm_block}.block.{parts[4]}.{rest}"
            else:
                sampler = "downsample" if stage == "down" else "upsample"
                ldm = f"{coder}.{stage}.{ldm_block}.{sampler}.conv.{parts[-1]}"
        elif parts[1] == "mid_block":
            rest = ".".join(parts[4:])
            if parts[2] == "resnets":
                rest = rest.replace("conv_shortcut", "nin_shortcut")
                ldm = f"{coder}.mid.block_{int(parts[3]) + 1}.{rest}"
            else:
                ldm = f"{coder}.mid.attn_1.{_rename(rest, _VAE_ATTENTION_RENAMES)}"
                # LDM stores the attention projections as 1x1 convolutions.
                if tensor.ndim == 2:
                    tensor = tensor[:, :, None, None]
        else:
            raise ValueError(f"no LDM name known for VAE key {key!r}")
        out[VAE_PREFIX + ldm] = tensor
    return out


def clip_to_ldm(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Map a transformers CLIPTextModel state dict to the SGM `transformer.text_model.*` layout."""
    out = {}
    for key, tensor in state.items():
        name = key if key.startswith("text_model.") else f"text_model.{key}"
        out[f"{prefix}transformer.{name}"] = tensor
    return out


def open_clip_to_ldm(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Map a transformers CLIPTextModelWithProjection state dict to the OpenCLIP layout."""
    state = {
        (k if k.startswith(("text_model.", "text_projection")) else f"text_model.{k}"): v for k, v in state.items()
    }
    top_level = DIFFUSERS_TO_LDM_MAPPING["openclip"]["layers"]
    layer_renames = (
        ("layer_norm1", "ln_1"),
        ("layer_norm2", "ln_2"),
        (".fc1.", ".c_fc."),
        (".fc2.", ".c_proj."),
        ("self_attn.out_proj", "attn.out_proj"),
    )
    out: dict[str, torch.Tensor] = {}
    fused: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        if key in top_level:
            out[prefix + top_level[key]] = tensor.T.contiguous() if key == "text_projection.weight" else tensor
            continue
        if not key.startswith("text_model.encoder.layers."):
            if key.endswith("position_ids"):
                continue
            raise ValueError(f"no OpenCLIP name known for key {key!r}")
        layer_key = key.replace("text_model.encoder.layers.", "transformer.resblocks.")
        for projection in ("q_proj", "k_proj", "v_proj"):
            marker = f".self_attn.{projection}."
            if marker in layer_key:
                head, kind = layer_key.split(marker)
                fused.setdefault(f"{head}.attn.in_proj_{kind}", {})[projection] = tensor
                break
        else:
            out[prefix + _rename(layer_key, layer_renames)] = tensor
    for key, parts in fused.items():
        out[prefix + key] = torch.cat([parts["q_proj"], parts["k_proj"], parts["v_proj"]], dim=0)
    return out


# FLUX transformer: diffusers prefix -> original prefix, for modules that are only renamed.
_FLUX_RENAMES = (
    ("time_text_embed.timestep_embedder.linear_1.", "time_in.in_layer."),
    ("time_text_embed.timestep_embedder.linear_2.", "time_in.out_layer."),
    ("time_text_embed.text_embedder.linear_1.", "vector_in.in_layer."),
    ("time_text_embed.text_embedder.linear_2.", "vector_in.out_layer."),
    ("time_text_embed.guidance_embedder.linear_1.", "guidance_in.in_layer."),
    ("time_text_embed.guidance_embedder.linear_2.", "guidance_in.out_layer."),
    ("context_embedder.", "txt_in."),
    ("x_embedder.", "img_in."),
    ("proj_out.", "final_layer.linear."),
)
_FLUX_DOUBLE_RENAMES = (
    ("norm1.linear.", "img_mod.lin."),
    ("norm1_context.linear.", "txt_mod.lin."),
    ("attn.norm_q.weight", "img_attn.norm.query_norm.scale"),
    ("attn.norm_k.weight", "img_attn.norm.key_norm.scale"),
    ("attn.norm_added_q.weight", "txt_attn.norm.query_norm.scale"),
    ("attn.norm_added_k.weight", "txt_attn.norm.key_norm.scale"),
    ("ff.net.0.proj.", "img_mlp.0."),
    ("ff.net.2.", "img_mlp.2."),
    ("ff_context.net.0.proj.", "txt_mlp.0."),
    ("ff_context.net.2.", "txt_mlp.2."),
    ("attn.to_out.0.", "img_attn.proj."),
    ("attn.to_add_out.", "txt_attn.proj."),
)
_FLUX_SINGLE_RENAMES = (
    ("norm.linear.", "modulation.lin."),
    ("attn.norm_q.weight", "norm.query_norm.scale"),
    ("attn.norm_k.weight", "norm.key_norm.scale"),
    ("proj_out.", "linear2."),
)
# Projections the original fuses into one matrix, in order: original name -> diffusers names.
_FLUX_DOUBLE_FUSED = {
    "img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
}
_FLUX_SINGLE_FUSED = {"linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")}


def _swap_halves(tensor: torch.Tensor) -> torch.Tensor:
    # The original final AdaLN emits (shift, scale); diffusers' emits (scale, shift).
    first, second = tensor.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def _flux_block(
    state: dict[str, torch.Tensor],
    source: str,
    target: str,
    renames: tuple[tuple[str, str], ...],
    fused: dict[str, tuple[str, ...]],
) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for original, parts in fused.items():
        for kind in ("weight", "bias"):
            out[f"{target}{original}.{kind}"] = torch.cat([state[f"{source}{part}.{kind}"] for part in parts])
    fused_parts = tuple(f"{source}{part}." for parts in fused.values() for part in parts)
    for key, tensor in state.items():
        if key.startswith(source) and not key.startswith(fused_parts):
            out[target + _rename(key[len(source) :], renames)] = tensor
    return out


def flux_transformer_to_original(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A diffusers FluxTransformer2DModel state dict in the layout of Black Forest Labs' checkpoints."""
    out: dict[str, torch.Tensor] = {}
    layouts = {
        "transformer_blocks": ("double_blocks", _FLUX_DOUBLE_RENAMES, _FLUX_DOUBLE_FUSED),
        "single_transformer_blocks": ("single_blocks", _FLUX_SINGLE_RENAMES, _FLUX_SINGLE_FUSED),
    }
    blocks = {tuple(key.split(".", 2)[:2]) for key in state if "transformer_blocks." in key}
    for kind, index in sorted(blocks):
        original, renames, fused = layouts[kind]
        out.update(_flux_block(state, f"{kind}.{index}.", f"{original}.{index}.", renames, fused))
    for key, tensor in state.items():
        if "transformer_blocks." in key:
            continue
        if key.startswith("norm_out.linear."):
            out["final_layer.adaLN_modulation.1." + key.rsplit(".", 1)[1]] = _swap_halves(tensor)
        else:
            out[_rename_prefix(key, _FLUX_RENAMES)] = tensor
    return out


def _rename_prefix(key: str, renames: tuple[tuple[str, str], ...]) -> str:
    for old, new in renames:
        if key.startswith(old):
            return new + key[len(old) :]
    raise KeyError(f"no original name for FLUX transformer key {key}")
