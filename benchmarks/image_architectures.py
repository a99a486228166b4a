"""Full-size architectures of this year's image families (Qwen-Image, FLUX.2 [dev] and [klein] 4B/9B, Z-Image,
FLUX.1 Kontext) built from their published configs with random weights: GPU benchmarks and memory figures without
downloading a checkpoint. Keys left at the classes' defaults are omitted; the tokenizers are the tiny local ones
(token ids only have to fit the vocabulary)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    AutoencoderKLFlux2,
    AutoencoderKLQwenImage,
    FlowMatchEulerDiscreteScheduler,
    Flux2KleinPipeline,
    Flux2Pipeline,
    Flux2Transformer2DModel,
    QwenImagePipeline,
    QwenImageTransformer2DModel,
    ZImagePipeline,
    ZImageTransformer2DModel,
)
from kserve_diffusion.testing.image_builders import qwen_image_scheduler
from kserve_diffusion.testing.tokenizers import build_mistral_tokenizer, build_qwen_tokenizer
from transformers import (
    Mistral3Config,
    Mistral3ForConditionalGeneration,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen3Config,
    Qwen3ForCausalLM,
    Qwen3Model,
)

from benchmarks.architectures import FLUX_VAE, count_parameters

# Qwen-Image's MMDiT (Qwen/Qwen-Image transformer/config.json).
QWEN_IMAGE_TRANSFORMER = {
    "patch_size": 2,
    "in_channels": 64,
    "out_channels": 16,
    "num_layers": 60,
    "attention_head_dim": 128,
    "num_attention_heads": 24,
    "joint_attention_dim": 3584,
    "axes_dims_rope": (16, 56, 56),
}
# Qwen2.5-VL-7B-Instruct, Qwen-Image's text encoder (and Qwen-Image-Edit's picture reader).
QWEN25_VL_7B = {
    "text_config": {
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "vocab_size": 152064,
        "rope_theta": 1000000.0,
        "rope_scaling": {"mrope_section": [16, 24, 24], "rope_type": "default", "type": "default"},
    },
    "vision_config": {
        "depth": 32,
        "hidden_size": 1280,
        "intermediate_size": 3420,
        "num_heads": 16,
        "out_hidden_size": 3584,
        "fullatt_block_indexes": [7, 15, 23, 31],
    },
    "vocab_size": 152064,
}
# FLUX.2 [dev]: diffusers' Flux2Transformer2DModel defaults are its config; [klein] 4B and 9B.
FLUX2_DEV_TRANSFORMER: dict[str, Any] = {}
FLUX2_KLEIN_4B_TRANSFORMER = {
    "num_layers": 5,
    "num_single_layers": 20,
    "num_attention_heads": 24,
    "joint_attention_dim": 7680,  # three stacked Qwen3-4B hidden states
    "guidance_embeds": False,
}
FLUX2_KLEIN_9B_TRANSFORMER = {
    "num_layers": 8,
    "num_single_layers": 24,
    "num_attention_heads": 32,
    "joint_attention_dim": 12288,  # three stacked Qwen3-8B hidden states
    "guidance_embeds": False,
}
# Mistral-Small-3.1-24B-Instruct-2503: FLUX.2 [dev]'s text encoder.
MISTRAL_SMALL_31 = {
    "text_config": {
        "model_type": "mistral",
        "hidden_size": 5120,
        "intermediate_size": 32768,
        "num_hidden_layers": 40,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "vocab_size": 131072,
        "rope_theta": 1000000000.0,
        "sliding_window": None,
    },
    "vision_config": {
        "model_type": "pixtral",
        "hidden_size": 1024,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "intermediate_size": 4096,
        "image_size": 1540,
        "patch_size": 14,
        "head_dim": 64,
    },
    "spatial_merge_size": 2,
    "vision_feature_layer": -1,
    "tie_word_embeddings": False,
}
# Qwen3-4B (FLUX.2 [klein] 4B, Z-Image) and Qwen3-8B (FLUX.2 [klein] 9B).
QWEN3_4B = {
    "hidden_size": 2560,
    "intermediate_size": 9728,
    "num_hidden_layers": 36,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "vocab_size": 151936,
    "tie_word_embeddings": True,
}
QWEN3_8B = {**QWEN3_4B, "hidden_size": 4096, "intermediate_size": 12288, "tie_word_embeddings": False}
# Z-Image's single-stream DiT (Tongyi-MAI/Z-Image-Turbo transformer/config.json).
Z_IMAGE_TRANSFORMER = {
    "dim": 3840,
    "n_layers": 30,
    "n_refiner_layers": 2,
    "n_heads": 30,
    "n_kv_heads": 30,
    "cap_feat_dim": 2560,
    "axes_dims": [32, 48, 48],
    "axes_lens": [1536, 512, 512],
}
# Published parameter counts (model cards) and how close the configs must come.
PUBLISHED_PARAMETERS: dict[str, tuple[float, float]] = {
    "qwen_image_transformer": (20.43e9, 0.01),
    "qwen25_vl_7b": (8.29e9, 0.01),
    "flux2_dev_transformer": (32.2e9, 0.01),
    "mistral_small_31": (24.0e9, 0.02),
    "flux2_klein_4b_transformer": (3.9e9, 0.03),
    "flux2_klein_9b_transformer": (9.1e9, 0.03),
    "qwen3_4b": (4.02e9, 0.01),
    "qwen3_8b": (8.19e9, 0.01),
    "z_image_transformer": (6.15e9, 0.01),
}


def qwen_image_transformer() -> QwenImageTransformer2DModel:
    """Qwen-Image's 20B MMDiT (Qwen-Image-Edit's is the same)."""
    return QwenImageTransformer2DModel(**QWEN_IMAGE_TRANSFORMER)


def qwen25_vl_7b() -> Qwen2_5_VLForConditionalGeneration:
    """Qwen2.5-VL-7B."""
    return Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(**QWEN25_VL_7B))


def flux2_transformer(config: dict[str, Any]) -> Flux2Transformer2DModel:
    """A FLUX.2 transformer ([dev]: the defaults)."""
    return Flux2Transformer2DModel(**config)


def mistral_small_31() -> Mistral3ForConditionalGeneration:
    """Mistral Small 3.1 24B with its Pixtral vision tower."""
    return Mistral3ForConditionalGeneration(Mistral3Config(**MISTRAL_SMALL_31))


def z_image_transformer() -> ZImageTransformer2DModel:
    """Z-Image's 6B DiT."""
    return ZImageTransformer2DModel(**Z_IMAGE_TRANSFORMER)


COMPONENTS: dict[str, Callable[[], torch.nn.Module]] = {
    "qwen_image_transformer": qwen_image_transformer,
    "qwen25_vl_7b": qwen25_vl_7b,
    "flux2_dev_transformer": lambda: flux2_transformer(FLUX2_DEV_TRANSFORMER),
    "mistral_small_31": mistral_small_31,
    "flux2_klein_4b_transformer": lambda: flux2_transformer(FLUX2_KLEIN_4B_TRANSFORMER),
    "flux2_klein_9b_transformer": lambda: flux2_transformer(FLUX2_KLEIN_9B_TRANSFORMER),
    "qwen3_4b": lambda: Qwen3ForCausalLM(Qwen3Config(**QWEN3_4B)),
    "qwen3_8b": lambda: Qwen3ForCausalLM(Qwen3Config(**QWEN3_8B)),
    "z_image_transformer": z_image_transformer,
}


def parameter_count(name: str) -> int:
    """Parameters of component `name`, counted on the meta device (no memory is used)."""
    return count_parameters(COMPONENTS[name])


def _flow_scheduler() -> FlowMatchEulerDiscreteScheduler:
    return FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True)


def build_qwen_image() -> QwenImagePipeline:
    """Qwen-Image, random weights."""
    return QwenImagePipeline(
        scheduler=qwen_image_scheduler(),
        vae=AutoencoderKLQwenImage(),
        text_encoder=qwen25_vl_7b(),
        tokenizer=build_qwen_tokenizer(),
        transformer=qwen_image_transformer(),
    )


def build_flux2_dev() -> Flux2Pipeline:
    """FLUX.2 [dev], random weights (its 24B text encoder included)."""
    return Flux2Pipeline(
        scheduler=_flow_scheduler(),
        vae=AutoencoderKLFlux2(),
        text_encoder=mistral_small_31(),
        tokenizer=build_mistral_tokenizer(),
        transformer=flux2_transformer(FLUX2_DEV_TRANSFORMER),
    )


def build_flux2_klein_4b() -> Flux2KleinPipeline:
    """FLUX.2 [klein] 4B (step-distilled), random weights."""
    return Flux2KleinPipeline(
        scheduler=_flow_scheduler(),
        vae=AutoencoderKLFlux2(),
        text_encoder=Qwen3ForCausalLM(Qwen3Config(**QWEN3_4B)),
        tokenizer=build_qwen_tokenizer(),
        transformer=flux2_transformer(FLUX2_KLEIN_4B_TRANSFORMER),
        is_distilled=True,
    )


def build_z_image() -> ZImagePipeline:
    """Z-Image-Turbo, random weights (FLUX.1's VAE)."""
    transformer = z_image_transformer()
    with torch.no_grad():
        transformer.x_pad_token.normal_()
        transformer.cap_pad_token.normal_()
    return ZImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=AutoencoderKL(**FLUX_VAE),
        text_encoder=Qwen3Model(Qwen3Config(**QWEN3_4B)),
        tokenizer=build_qwen_tokenizer(),
        transformer=transformer,
    )


# Benchmark family -> (the server's family, its variant, the full-size builder).
IMAGE_BUILDERS: dict[str, tuple[str, str, Callable[[], Any]]] = {
    "qwen_image": ("qwen_image", "qwen_image", build_qwen_image),
    "flux2_dev": ("flux2", "dev", build_flux2_dev),
    "flux2_klein": ("flux2", "klein", build_flux2_klein_4b),
    "z_image": ("z_image", "turbo", build_z_image),
}
