"""Tiny random-weight pipelines of this year's image families: real diffusers/transformers classes, tiny dimensions,
tokenizers and processors made locally (testing/tokenizers.py). Each VAE downsamples by 8 and each transformer
reads 2x2 patches, as the real ones do, so sizes round to 16 like theirs. A new family is one builder here and a
`BUILDERS` entry; `folder_fixes` writes model_index.json as the published folders have it.
It is one module because the families share their tokenizers, text encoders and VAEs, and one table lists them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    AutoencoderKLFlux2,
    AutoencoderKLQwenImage,
    DiffusionPipeline,
    FlowMatchEulerDiscreteScheduler,
    Flux2KleinPipeline,
    Flux2Pipeline,
    Flux2Transformer2DModel,
    FluxKontextPipeline,
    QwenImageEditPipeline,
    QwenImageEditPlusPipeline,
    QwenImagePipeline,
    QwenImageTransformer2DModel,
    ZImagePipeline,
    ZImageTransformer2DModel,
)
from transformers import (
    Mistral3Config,
    Mistral3ForConditionalGeneration,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLImageProcessor,
    Qwen3Config,
    Qwen3ForCausalLM,
    Qwen3Model,
)

from ..pipelines.processors import PicturesOnlyQwen2VLProcessor
from .builders import build_flux, seeded
from .tokenizers import build_mistral_tokenizer, build_qwen_tokenizer

HIDDEN = 16  # text encoders' width
# FLUX.2 stacks these hidden states of its text encoder (the pipelines' defaults), so the tiny encoders keep
# that many layers (each 16 wide).
FLUX2_DEV_LAYERS = 30
FLUX2_KLEIN_LAYERS = 27
FLUX2_LATENT_CHANNELS = 8


def _qwen_vl_encoder(tokenizer: Any) -> Qwen2_5_VLForConditionalGeneration:
    """Qwen2.5-VL (Qwen-Image's text encoder; its vision tower reads Qwen-Image-Edit's pictures)."""
    ids = {
        name: tokenizer.convert_tokens_to_ids(token)
        for name, token in (
            ("image_token_id", "<|image_pad|>"),
            ("video_token_id", "<|video_pad|>"),
            ("vision_start_token_id", "<|vision_start|>"),
            ("vision_end_token_id", "<|vision_end|>"),
        )
    }
    config = Qwen2_5_VLConfig(
        text_config={
            "hidden_size": HIDDEN,
            "intermediate_size": HIDDEN,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
            "rope_scaling": {"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"},
            "rope_theta": 1000000.0,
            "vocab_size": len(tokenizer),
            "bos_token_id": None,
            "eos_token_id": tokenizer.convert_tokens_to_ids("<|im_end|>"),
        },
        vision_config={
            "depth": 2,
            "hidden_size": HIDDEN,
            "intermediate_size": HIDDEN,
            "num_heads": 2,
            "out_hidden_size": HIDDEN,
        },
        vocab_size=len(tokenizer),
        **ids,
    )
    return Qwen2_5_VLForConditionalGeneration(config)


def qwen_image_scheduler() -> FlowMatchEulerDiscreteScheduler:
    """Qwen-Image's scheduler configuration (dynamic, exponential time shift), as its folder has it."""
    return FlowMatchEulerDiscreteScheduler(
        base_image_seq_len=256,
        base_shift=0.5,
        max_image_seq_len=8192,
        max_shift=0.9,
        shift=1.0,
        shift_terminal=0.02,
        time_shift_type="exponential",
        use_dynamic_shifting=True,
    )


def _qwen_parts() -> dict[str, Any]:
    tokenizer = build_qwen_tokenizer()
    return {
        "scheduler": qwen_image_scheduler(),
        "vae": seeded(
            20,
            lambda: AutoencoderKLQwenImage(
                base_dim=4,
                z_dim=4,
                dim_mult=[1, 1, 1, 1],
                num_res_blocks=1,
                temperal_downsample=[False, True, True],  # three downsamplings: 8x in space
                latents_mean=[0.0] * 4,
                latents_std=[1.0] * 4,
            ),
        ),
        "text_encoder": seeded(21, lambda: _qwen_vl_encoder(tokenizer)),
        "tokenizer": tokenizer,
        "transformer": seeded(
            22,
            lambda: QwenImageTransformer2DModel(
                patch_size=2,
                in_channels=16,
                out_channels=4,
                num_layers=1,
                attention_head_dim=16,
                num_attention_heads=2,
                joint_attention_dim=HIDDEN,
                guidance_embeds=False,
                axes_dims_rope=(8, 4, 4),
            ),
        ),
    }


def build_qwen_image() -> QwenImagePipeline:
    """Tiny Qwen-Image (text2img; img2img and inpaint share its modules)."""
    return QwenImagePipeline(**_qwen_parts())


def _qwen_processor(tokenizer: Any) -> PicturesOnlyQwen2VLProcessor:
    # Small pictures for the tiny vision tower: Qwen-Image-Edit sizes them to ~384x384 first.
    pictures = Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=112 * 112)
    return PicturesOnlyQwen2VLProcessor(pictures, tokenizer, chat_template=tokenizer.chat_template)


def build_qwen_image_edit() -> QwenImageEditPipeline:
    """Tiny Qwen-Image-Edit (one picture)."""
    parts = _qwen_parts()
    return QwenImageEditPipeline(**parts, processor=_qwen_processor(parts["tokenizer"]))


def build_qwen_image_edit_plus() -> QwenImageEditPlusPipeline:
    """Tiny Qwen-Image-Edit-Plus (2509/2511: up to three pictures)."""
    parts = _qwen_parts()
    return QwenImageEditPlusPipeline(**parts, processor=_qwen_processor(parts["tokenizer"]))


def _flux2_vae() -> AutoencoderKLFlux2:
    return AutoencoderKLFlux2(
        sample_size=32,
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,  # three downsamplings: 8x
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(4, 4, 4, 4),
        layers_per_block=1,
        latent_channels=FLUX2_LATENT_CHANNELS,
        norm_num_groups=1,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )


def _flux2_transformer(text_width: int, guidance: bool) -> Flux2Transformer2DModel:
    return Flux2Transformer2DModel(
        patch_size=1,
        in_channels=FLUX2_LATENT_CHANNELS * 4,  # 2x2 patches of the latents
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=text_width,
        timestep_guidance_channels=256,
        axes_dims_rope=[4, 4, 4, 4],
        guidance_embeds=guidance,
    )


def build_flux2_dev() -> Flux2Pipeline:
    """Tiny FLUX.2 [dev]: a Mistral3 text encoder, guidance embeddings."""
    tokenizer = build_mistral_tokenizer()
    config = Mistral3Config(
        text_config={
            "model_type": "mistral",
            "vocab_size": len(tokenizer),
            "hidden_size": HIDDEN,
            "intermediate_size": HIDDEN,
            "max_position_embeddings": 1024,
            "num_attention_heads": 2,
            "num_hidden_layers": FLUX2_DEV_LAYERS,
            "num_key_value_heads": 2,
            "head_dim": 8,
            "rope_theta": 1000000000.0,
            "sliding_window": None,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "pad_token_id": 3,
        },
        vision_config={
            "model_type": "pixtral",
            "hidden_size": HIDDEN,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": HIDDEN,
            "image_size": 64,
            "patch_size": 8,
            "num_channels": 3,
            "head_dim": 8,
        },
        image_token_index=tokenizer.convert_tokens_to_ids("[IMG]"),
        spatial_merge_size=1,
        vision_feature_layer=-1,
    )
    return Flux2Pipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True),
        vae=seeded(30, _flux2_vae),
        text_encoder=seeded(31, lambda: Mistral3ForConditionalGeneration(config)),
        tokenizer=tokenizer,
        transformer=seeded(32, lambda: _flux2_transformer(3 * HIDDEN, guidance=True)),
    )


def _qwen3_config(tokenizer: Any, layers: int) -> Qwen3Config:
    """A tiny Qwen3 (FLUX.2 [klein]'s and Z-Image's text encoder) of `layers` layers."""
    return Qwen3Config(
        hidden_size=HIDDEN,
        intermediate_size=HIDDEN,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=8,
        vocab_size=len(tokenizer),
        max_position_embeddings=1024,
    )


def build_flux2_klein(distilled: bool = True) -> Flux2KleinPipeline:
    """Tiny FLUX.2 [klein]: a Qwen3 text encoder, no guidance embeddings; step-distilled unless `distilled` is False."""
    tokenizer = build_qwen_tokenizer()
    config = _qwen3_config(tokenizer, FLUX2_KLEIN_LAYERS)
    return Flux2KleinPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True),
        vae=seeded(30, _flux2_vae),
        text_encoder=seeded(33, lambda: Qwen3ForCausalLM(config)),
        tokenizer=tokenizer,
        transformer=seeded(34, lambda: _flux2_transformer(3 * HIDDEN, guidance=False)),
        is_distilled=distilled,
    )


def _z_image_transformer() -> ZImageTransformer2DModel:
    transformer = ZImageTransformer2DModel(
        all_patch_size=(2,),
        all_f_patch_size=(1,),
        in_channels=16,
        dim=32,
        n_layers=1,
        n_refiner_layers=1,
        n_heads=2,
        n_kv_heads=2,
        norm_eps=1e-5,
        qk_norm=True,
        cap_feat_dim=HIDDEN,
        rope_theta=256.0,
        t_scale=1000.0,
        axes_dims=[8, 4, 4],
        axes_lens=[256, 32, 32],
    )
    with torch.no_grad():  # created with torch.empty: fixed so the tiny model is finite and repeatable
        transformer.x_pad_token.copy_(torch.ones_like(transformer.x_pad_token))
        transformer.cap_pad_token.copy_(torch.ones_like(transformer.cap_pad_token))
    return transformer


def build_z_image() -> ZImagePipeline:
    """Tiny Z-Image (Turbo's scheduler shift): a Qwen3 text encoder, a FLUX-style 16-channel VAE."""
    tokenizer = build_qwen_tokenizer()
    config = _qwen3_config(tokenizer, 2)
    vae = lambda: AutoencoderKL(  # noqa: E731
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        block_out_channels=[8, 16, 16, 16],
        layers_per_block=1,
        latent_channels=16,
        norm_num_groups=8,
        sample_size=32,
        scaling_factor=0.3611,
        shift_factor=0.1159,
    )
    return ZImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=seeded(40, vae),
        text_encoder=seeded(41, lambda: Qwen3Model(config)),
        tokenizer=tokenizer,
        transformer=seeded(42, _z_image_transformer),
    )


def build_flux_kontext() -> FluxKontextPipeline:
    """Tiny FLUX.1 Kontext: FLUX.1 [dev]'s modules (Kontext is a FLUX.1 transformer trained on picture pairs)."""
    flux = build_flux()
    return FluxKontextPipeline(**flux.components)


BUILDERS: dict[str, Callable[[], DiffusionPipeline]] = {
    "qwen_image": build_qwen_image,
    "qwen_image_edit": build_qwen_image_edit,
    "qwen_image_edit_plus": build_qwen_image_edit_plus,
    "flux2": build_flux2_dev,
    "flux2_klein": build_flux2_klein,
    "flux2_klein_base": lambda: build_flux2_klein(distilled=False),
    "z_image": build_z_image,
    "flux_kontext": build_flux_kontext,
}
# model_index.json entries as the published folders name them: the processors this server loads in their place
# (pipelines/processors.py) are written under the classes those folders declare.
PUBLISHED_CLASSES = {
    "qwen_image_edit": {"processor": ["transformers", "Qwen2VLProcessor"]},
    "qwen_image_edit_plus": {"processor": ["transformers", "Qwen2VLProcessor"]},
    "flux2": {"tokenizer": ["transformers", "PixtralProcessor"]},
}


def folder_fixes(family: str, out: Path) -> None:
    """Rewrite the saved model_index.json (and processor config) with the published folders' class names."""
    fixes = PUBLISHED_CLASSES.get(family)
    if not fixes:
        return
    index_path = out / "model_index.json"
    index = json.loads(index_path.read_text())
    index.update(fixes)
    index_path.write_text(json.dumps(index, indent=2) + "\n")
    processor_config = out / "processor" / "processor_config.json"
    if processor_config.is_file():
        config = json.loads(processor_config.read_text())
        config["processor_class"] = "Qwen2VLProcessor"
        processor_config.write_text(json.dumps(config, indent=2) + "\n")
