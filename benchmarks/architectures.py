"""Full-size architectures (SDXL base and refiner, FLUX.1, Wan2.1 1.3B/14B and I2V, Wan2.2 A14B and TI2V-5B)
built from the published configs
with random weights: GPU benchmarks without downloading a checkpoint.

The configs are those of the models' `config.json` files (keys left at the classes' defaults are
omitted); the tokenizers are the locally generated tiny ones (token ids only have to fit the vocabulary).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    AutoencoderKLWan,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
    UniPCMultistepScheduler,
    WanImageToVideoPipeline,
    WanPipeline,
    WanTransformer3DModel,
)
from kserve_diffusion.testing import tiny
from transformers import (
    CLIPImageProcessor,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
    T5Config,
    T5EncoderModel,
    UMT5Config,
    UMT5EncoderModel,
)

SDXL_UNET = {
    "sample_size": 128,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "block_out_channels": (320, 640, 1280),
    "layers_per_block": 2,
    "attention_head_dim": (5, 10, 20),
    "transformer_layers_per_block": (1, 2, 10),
    "cross_attention_dim": 2048,
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
}
SDXL_REFINER_UNET = {
    "sample_size": 128,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "block_out_channels": (384, 768, 1536, 1536),
    "layers_per_block": 2,
    "attention_head_dim": (6, 12, 24, 24),
    "transformer_layers_per_block": 4,
    "cross_attention_dim": 1280,
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2560,
}
_VAE_BLOCKS = {
    "block_out_channels": (128, 256, 512, 512),
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "layers_per_block": 2,
    "sample_size": 1024,
}
SDXL_VAE = {**_VAE_BLOCKS, "latent_channels": 4, "scaling_factor": 0.13025}
FLUX_VAE = {
    **_VAE_BLOCKS,
    "latent_channels": 16,
    "scaling_factor": 0.3611,
    "shift_factor": 0.1159,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
}
CLIP_L = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "projection_dim": 768,
    "hidden_act": "quick_gelu",
}
OPENCLIP_BIGG = {
    "vocab_size": 49408,
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_hidden_layers": 32,
    "num_attention_heads": 20,
    "max_position_embeddings": 77,
    "projection_dim": 1280,
    "hidden_act": "gelu",
}
T5_XXL = {
    "vocab_size": 32128,
    "d_model": 4096,
    "d_ff": 10240,
    "d_kv": 64,
    "num_heads": 64,
    "num_layers": 24,
    "feed_forward_proj": "gated-gelu",
}
UMT5_XXL = {**T5_XXL, "vocab_size": 256384}
FLUX_TRANSFORMER = {
    "patch_size": 1,
    "in_channels": 64,
    "num_layers": 19,
    "num_single_layers": 38,
    "attention_head_dim": 128,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,
    "pooled_projection_dim": 768,
    "guidance_embeds": True,
    "axes_dims_rope": (16, 56, 56),
}
WAN_1_3B_TRANSFORMER = {
    "num_attention_heads": 12,
    "attention_head_dim": 128,
    "ffn_dim": 8960,
    "num_layers": 30,
    "text_dim": 4096,
}
# Wan2.1 T2V 14B; each Wan2.2 A14B expert has this shape too (T2V: 16 input channels, I2V: 36, no image encoder).
WAN_14B_TRANSFORMER = {**WAN_1_3B_TRANSFORMER, "num_attention_heads": 40, "ffn_dim": 13824, "num_layers": 40}
# Wan2.1 I2V 14B: noise + frame mask + the picture's latents in, and cross-attention to CLIP image features.
WAN_I2V_14B_TRANSFORMER = {**WAN_14B_TRANSFORMER, "in_channels": 36, "image_dim": 1280, "added_kv_proj_dim": 5120}
WAN22_I2V_EXPERT = {**WAN_14B_TRANSFORMER, "in_channels": 36}
WAN22_TI2V_5B_TRANSFORMER = {
    **WAN_1_3B_TRANSFORMER,
    "num_attention_heads": 24,
    "ffn_dim": 14336,
    "in_channels": 48,
    "out_channels": 48,
}
# Wan2.1 I2V's image encoder: open-clip XLM-RoBERTa-large ViT-H/14, its vision tower.
CLIP_VIT_H = {
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_hidden_layers": 32,
    "num_attention_heads": 16,
    "patch_size": 14,
    "image_size": 224,
    "projection_dim": 1024,
    "hidden_act": "gelu",
}
# The Wan2.2 VAE (TI2V-5B): 48 latent channels, 16x in space through a 2x2 patchify.
WAN22_VAE = {
    "base_dim": 160,
    "decoder_base_dim": 256,
    "z_dim": 48,
    "dim_mult": [1, 2, 4, 4],
    "num_res_blocks": 2,
    "temperal_downsample": [False, True, True],
    "is_residual": True,
    "in_channels": 12,
    "out_channels": 12,
    "patch_size": 2,
    "scale_factor_spatial": 16,
    "scale_factor_temporal": 4,
    "latents_mean": [0.0] * 48,
    "latents_std": [1.0] * 48,
}
# Published parameter counts (model cards, papers) and how close the configs must come: exact counts
# are checked closely, the nominal "2.3B", "1.3B", "14B" and "5B" loosely.
PUBLISHED_PARAMETERS: dict[str, tuple[float, float]] = {
    "sdxl_unet": (2_567_463_684, 0.0),
    "sdxl_refiner_unet": (2.3e9, 0.05),
    "flux_transformer": (11.9e9, 0.01),
    "t5_xxl_encoder": (4.76e9, 0.01),
    "wan_1_3b_transformer": (1.3e9, 0.1),
    "wan_14b_transformer": (14.3e9, 0.01),  # the checkpoint's count on its model page
    "wan_i2v_14b_transformer": (16.4e9, 0.01),  # "14B" plus the image cross-attention, as its model page counts
    "wan22_i2v_expert": (14.3e9, 0.01),  # each of the two: A14B is 27B in all, 14B active per step
    "wan22_ti2v_5b_transformer": (5e9, 0.05),
    "clip_vit_h_vision": (632e6, 0.02),
}


def sdxl_unet() -> UNet2DConditionModel:
    """The SDXL base UNet."""
    return UNet2DConditionModel(**SDXL_UNET)


def sdxl_refiner_unet() -> UNet2DConditionModel:
    """The SDXL refiner UNet."""
    return UNet2DConditionModel(**SDXL_REFINER_UNET)


def flux_transformer() -> FluxTransformer2DModel:
    """The FLUX.1-dev transformer (12B)."""
    return FluxTransformer2DModel(**FLUX_TRANSFORMER)


def t5_xxl_encoder() -> T5EncoderModel:
    """FLUX's T5-XXL text encoder."""
    return T5EncoderModel(T5Config(**T5_XXL))


def wan_1_3b_transformer() -> WanTransformer3DModel:
    """The Wan2.1 T2V 1.3B transformer."""
    return WanTransformer3DModel(**WAN_1_3B_TRANSFORMER)


def wan_14b_transformer() -> WanTransformer3DModel:
    """The Wan2.1 T2V 14B transformer (and each Wan2.2 T2V-A14B expert)."""
    return WanTransformer3DModel(**WAN_14B_TRANSFORMER)


def wan_i2v_14b_transformer() -> WanTransformer3DModel:
    """The Wan2.1 I2V 14B transformer."""
    return WanTransformer3DModel(**WAN_I2V_14B_TRANSFORMER)


def wan22_i2v_expert() -> WanTransformer3DModel:
    """One Wan2.2 I2V-A14B expert."""
    return WanTransformer3DModel(**WAN22_I2V_EXPERT)


def wan22_ti2v_5b_transformer() -> WanTransformer3DModel:
    """The Wan2.2 TI2V-5B transformer."""
    return WanTransformer3DModel(**WAN22_TI2V_5B_TRANSFORMER)


def clip_vit_h_vision() -> CLIPVisionModelWithProjection:
    """Wan2.1 I2V's CLIP image encoder."""
    return CLIPVisionModelWithProjection(CLIPVisionConfig(**CLIP_VIT_H))


COMPONENTS: dict[str, Callable[[], torch.nn.Module]] = {
    "sdxl_unet": sdxl_unet,
    "sdxl_refiner_unet": sdxl_refiner_unet,
    "flux_transformer": flux_transformer,
    "t5_xxl_encoder": t5_xxl_encoder,
    "wan_1_3b_transformer": wan_1_3b_transformer,
    "wan_14b_transformer": wan_14b_transformer,
    "wan_i2v_14b_transformer": wan_i2v_14b_transformer,
    "wan22_i2v_expert": wan22_i2v_expert,
    "wan22_ti2v_5b_transformer": wan22_ti2v_5b_transformer,
    "clip_vit_h_vision": clip_vit_h_vision,
}


def _clip(config: dict[str, Any], projection: bool) -> torch.nn.Module:
    model = CLIPTextModelWithProjection if projection else CLIPTextModel
    return model(CLIPTextConfig(**config))


def build_sdxl() -> StableDiffusionXLPipeline:
    """SDXL base 1.0, random weights."""
    return StableDiffusionXLPipeline(
        vae=AutoencoderKL(**SDXL_VAE, force_upcast=True),
        text_encoder=_clip(CLIP_L, projection=False),
        text_encoder_2=_clip(OPENCLIP_BIGG, projection=True),
        tokenizer=tiny.build_tokenizer(),
        tokenizer_2=tiny.build_tokenizer(),
        unet=sdxl_unet(),
        scheduler=EulerDiscreteScheduler(
            beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", timestep_spacing="leading"
        ),
    )


def build_sdxl_refiner(base: StableDiffusionXLPipeline) -> StableDiffusionXLImg2ImgPipeline:
    """The SDXL refiner 1.0, random weights, sharing the base's OpenCLIP encoder and VAE (as the server does)."""
    return StableDiffusionXLImg2ImgPipeline(
        vae=base.vae,
        text_encoder=None,
        text_encoder_2=base.text_encoder_2,
        tokenizer=None,
        tokenizer_2=base.tokenizer_2,
        unet=sdxl_refiner_unet(),
        scheduler=base.scheduler,
        requires_aesthetics_score=True,
        force_zeros_for_empty_prompt=False,
    )


def build_flux() -> FluxPipeline:
    """FLUX.1-dev, random weights."""
    t5_tokenizer = tiny.build_t5_tokenizer()
    t5_tokenizer.model_max_length = 512
    return FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(
            shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256
        ),
        vae=AutoencoderKL(**FLUX_VAE),
        text_encoder=_clip(CLIP_L, projection=False),
        tokenizer=tiny.build_tokenizer(),
        text_encoder_2=t5_xxl_encoder(),
        tokenizer_2=t5_tokenizer,
        transformer=flux_transformer(),
    )


def build_wan() -> WanPipeline:
    """Wan2.1 T2V 1.3B, random weights."""
    tokenizer = tiny.build_t5_tokenizer()
    tokenizer.model_max_length = 512
    return WanPipeline(
        tokenizer=tokenizer,
        text_encoder=UMT5EncoderModel(UMT5Config(**UMT5_XXL)),
        transformer=wan_1_3b_transformer(),
        vae=AutoencoderKLWan(),
        scheduler=UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0),
    )


def _umt5_parts() -> dict[str, Any]:
    tokenizer = tiny.build_t5_tokenizer()
    tokenizer.model_max_length = 512
    return {"tokenizer": tokenizer, "text_encoder": UMT5EncoderModel(UMT5Config(**UMT5_XXL))}


def _wan_scheduler(flow_shift: float) -> UniPCMultistepScheduler:
    return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=flow_shift)


def build_wan_i2v() -> WanImageToVideoPipeline:
    """Wan2.1 I2V 14B (480P), random weights."""
    return WanImageToVideoPipeline(
        **_umt5_parts(),
        image_encoder=clip_vit_h_vision(),
        image_processor=CLIPImageProcessor(crop_size=224, size={"shortest_edge": 224}),
        transformer=wan_i2v_14b_transformer(),
        vae=AutoencoderKLWan(),
        scheduler=_wan_scheduler(3.0),
    )


def build_wan22_i2v() -> WanImageToVideoPipeline:
    """Wan2.2 I2V-A14B: two 14B experts switched at boundary_ratio 0.9, random weights."""
    return WanImageToVideoPipeline(
        **_umt5_parts(),
        transformer=wan22_i2v_expert(),
        transformer_2=wan22_i2v_expert(),
        boundary_ratio=0.9,
        vae=AutoencoderKLWan(),
        scheduler=_wan_scheduler(5.0),
    )


def build_wan22_ti2v() -> WanPipeline:
    """Wan2.2 TI2V-5B with the Wan2.2 VAE, random weights."""
    return WanPipeline(
        **_umt5_parts(),
        transformer=wan22_ti2v_5b_transformer(),
        vae=AutoencoderKLWan(**WAN22_VAE),
        expand_timesteps=True,
        scheduler=_wan_scheduler(5.0),
    )


# The dtype each model card recommends on a GPU.
DTYPES: dict[str, torch.dtype] = {
    "sdxl": torch.float16,
    "flux": torch.bfloat16,
    "wan": torch.bfloat16,
    "wan-i2v": torch.bfloat16,
    "wan22-i2v": torch.bfloat16,
    "wan22-ti2v": torch.bfloat16,
}


def count_parameters(build: Callable[[], torch.nn.Module]) -> int:
    """Parameters of the module `build` makes, counted on the meta device (no memory is used)."""
    with torch.device("meta"):
        module = build()
    return sum(parameter.numel() for parameter in module.parameters())


def parameter_count(name: str) -> int:
    """Parameters of component `name`, counted on the meta device."""
    return count_parameters(COMPONENTS[name])
