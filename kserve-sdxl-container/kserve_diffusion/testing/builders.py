"""Tiny random-weight pipelines of each family: real diffusers/transformers classes with tiny dimensions.

Every component is built from its own fixed seed, so the tiny refiner's `text_encoder_2` and VAE, and the
tiny inpainting model's text encoders and VAE, equal the tiny base's. The VAE downsamples by 8 like the
real one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLInpaintPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    PreTrainedTokenizerFast,
    T5Config,
    T5EncoderModel,
)

from .tokenizers import build_t5_tokenizer, build_tokenizer

CLIP_HIDDEN = 32
T5_HIDDEN = 32
# diffusers tells the two SDXL text encoders apart by width (768 vs 1280 in the real model),
# so the tiny ones differ too.
OPEN_CLIP_HIDDEN = 48
TIME_EMBED_DIM = 8
LAYERS_PER_BLOCK = 1
VAE_BLOCKS = 4  # three downsamplings: a factor of 8, as in the real SDXL VAE
# SGM's conditioner checks for block 9 of the OpenCLIP encoder, so the tiny one keeps ten layers.
OPEN_CLIP_LAYERS = 10
# A dedicated inpainting UNet reads noisy latents (4), the mask (1) and the masked image's latents (4).
INPAINT_IN_CHANNELS = 9


def seeded(seed: int, build: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build().eval()


def _text_config(tokenizer: CLIPTokenizer, hidden: int, layers: int) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=1000,
        hidden_size=hidden,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=layers,
        max_position_embeddings=77,
        projection_dim=hidden,
        hidden_act="gelu",
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def _vae(latent_channels: int = 4, scaling_factor: float = 0.13025, **variant: Any) -> AutoencoderKL:
    """The tiny VAE: four blocks, so it downsamples by 8 like the real ones; SDXL's latents by default."""
    return AutoencoderKL(
        block_out_channels=(8, 16, 16, 16),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * VAE_BLOCKS,
        up_block_types=("UpDecoderBlock2D",) * VAE_BLOCKS,
        latent_channels=latent_channels,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=1024,
        scaling_factor=scaling_factor,
        force_upcast=False,
        **variant,
    )


def _unet(cross_attention_dim: int, time_ids: int, in_channels: int = 4) -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=128,
        in_channels=in_channels,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=LAYERS_PER_BLOCK,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        transformer_layers_per_block=(1, 1),
        use_linear_projection=True,
        cross_attention_dim=cross_attention_dim,
        addition_embed_type="text_time",
        addition_time_embed_dim=TIME_EMBED_DIM,
        projection_class_embeddings_input_dim=time_ids * TIME_EMBED_DIM + OPEN_CLIP_HIDDEN,
        norm_num_groups=8,
    )


def _scheduler() -> EulerDiscreteScheduler:
    return EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        timestep_spacing="leading",
        num_train_timesteps=1000,
    )


def build_sdxl_base() -> StableDiffusionXLPipeline:
    """The tiny SDXL base pipeline (two CLIP encoders, UNet, VAE)."""
    tokenizer = build_tokenizer()
    return StableDiffusionXLPipeline(
        vae=seeded(1, _vae),
        text_encoder=seeded(2, lambda: CLIPTextModel(_text_config(tokenizer, CLIP_HIDDEN, 2))),
        tokenizer=tokenizer,
        text_encoder_2=seeded(
            3, lambda: CLIPTextModelWithProjection(_text_config(tokenizer, OPEN_CLIP_HIDDEN, OPEN_CLIP_LAYERS))
        ),
        tokenizer_2=build_tokenizer(),
        # base conditioning: original size, crop, target size -> six time ids
        unet=seeded(4, lambda: _unet(cross_attention_dim=CLIP_HIDDEN + OPEN_CLIP_HIDDEN, time_ids=6)),
        scheduler=_scheduler(),
    )


def build_sdxl_refiner() -> StableDiffusionXLImg2ImgPipeline:
    """The tiny SDXL refiner: `text_encoder_2` and VAE identical to the tiny base's."""
    tokenizer = build_tokenizer()
    return StableDiffusionXLImg2ImgPipeline(
        vae=seeded(1, _vae),
        text_encoder=None,
        tokenizer=None,
        text_encoder_2=seeded(
            3, lambda: CLIPTextModelWithProjection(_text_config(tokenizer, OPEN_CLIP_HIDDEN, OPEN_CLIP_LAYERS))
        ),
        tokenizer_2=tokenizer,
        # refiner conditioning adds an aesthetic score: five time ids
        unet=seeded(5, lambda: _unet(cross_attention_dim=OPEN_CLIP_HIDDEN, time_ids=5)),
        scheduler=_scheduler(),
        requires_aesthetics_score=True,
        force_zeros_for_empty_prompt=False,
    )


def build_sdxl_inpaint() -> StableDiffusionXLInpaintPipeline:
    """The tiny dedicated SDXL inpainting model: a 9-channel UNet; encoders and VAE identical to the tiny base's."""
    base = build_sdxl_base()
    return StableDiffusionXLInpaintPipeline(
        vae=base.vae,
        text_encoder=base.text_encoder,
        tokenizer=base.tokenizer,
        text_encoder_2=base.text_encoder_2,
        tokenizer_2=base.tokenizer_2,
        unet=seeded(
            6,
            lambda: _unet(
                cross_attention_dim=CLIP_HIDDEN + OPEN_CLIP_HIDDEN, time_ids=6, in_channels=INPAINT_IN_CHANNELS
            ),
        ),
        scheduler=_scheduler(),
    )


def t5_dimensions(tokenizer: PreTrainedTokenizerFast) -> dict[str, int | None]:
    """Tiny T5 (FLUX) / UMT5 (Wan) encoder sizes and the tokenizer's special ids."""
    return {
        "vocab_size": len(tokenizer),
        "d_model": T5_HIDDEN,
        "d_kv": 8,
        "d_ff": 37,
        "num_layers": 2,
        "num_heads": 4,
        "relative_attention_num_buckets": 8,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "decoder_start_token_id": tokenizer.pad_token_id,
    }


FLUX_LATENT_CHANNELS = 16  # as the real FLUX VAE; the transformer reads 2x2 patches of them


def _flux_vae() -> AutoencoderKL:
    # FLUX's VAE: 16 latent channels, a shift factor, and no quant convs.
    return _vae(
        latent_channels=FLUX_LATENT_CHANNELS,
        scaling_factor=0.3611,
        shift_factor=0.1159,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )


def flux_transformer(guidance: bool, heads: int = 2, head_dim: int = 16) -> FluxTransformer2DModel:
    """A FLUX transformer with one double and one single block; `guidance` makes it dev-like.

    The default is tiny; heads=24, head_dim=128 gives the real width (3072), which diffusers' converter
    of original-layout single files assumes.
    """
    rope = head_dim // 4 // 2 * 2  # three even axes summing to head_dim, as FLUX's (16, 56, 56)
    return FluxTransformer2DModel(
        patch_size=1,
        in_channels=FLUX_LATENT_CHANNELS * 4,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=head_dim,
        num_attention_heads=heads,
        joint_attention_dim=T5_HIDDEN,
        pooled_projection_dim=CLIP_HIDDEN,
        guidance_embeds=guidance,
        axes_dims_rope=(rope, (head_dim - rope) // 2, (head_dim - rope) // 2),
    )


def build_flux(schnell: bool = False) -> FluxPipeline:
    """The tiny FLUX.1 pipeline (CLIP and T5 encoders, transformer, VAE): dev-like, or schnell-like with
    no guidance embeddings and schnell's fixed-shift scheduler."""
    tokenizer = build_tokenizer()
    t5_tokenizer = build_t5_tokenizer()
    t5_config = T5Config(**t5_dimensions(t5_tokenizer))
    # The schedulers of the FLUX.1 repositories: dev shifts by image size, schnell does not.
    shifting = {"shift": 1.0} if schnell else {"shift": 3.0, "use_dynamic_shifting": True}
    return FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(
            num_train_timesteps=1000,
            base_image_seq_len=256,
            max_image_seq_len=4096,
            base_shift=0.5,
            max_shift=1.15,
            **shifting,
        ),
        vae=seeded(10, _flux_vae),
        text_encoder=seeded(11, lambda: CLIPTextModel(_text_config(tokenizer, CLIP_HIDDEN, 2))),
        tokenizer=tokenizer,
        text_encoder_2=seeded(12, lambda: T5EncoderModel(t5_config)),
        tokenizer_2=t5_tokenizer,
        transformer=seeded(13, lambda: flux_transformer(guidance=not schnell)),
    )
