"""Tiny random-weight Wan pipelines, one per variant `pipelines/wan_variants.py` tells apart.

All share the tiny UMT5 encoder; the Wan2.1 VAE is shared by every variant but TI2V-5B, which has the
Wan2.2 VAE (48 latent channels, 16x in space through a 2x2 patchify). Each component has its own seed, so
the same variant is built identically every time, and the Wan2.1 T2V one equals what earlier versions built.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from diffusers import (
    AutoencoderKLWan,
    UniPCMultistepScheduler,
    WanImageToVideoPipeline,
    WanPipeline,
    WanTransformer3DModel,
)
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
    UMT5Config,
    UMT5EncoderModel,
)

from .builders import T5_HIDDEN, seeded, t5_dimensions
from .tokenizers import build_t5_tokenizer

WAN21_LATENTS = 16
WAN22_LATENTS = 48
IMAGE_HIDDEN = 8  # the tiny CLIP image encoder's width (Wan2.1 I2V reads its penultimate hidden states)
# Wan2.2's boundaries (model_index.json of the A14B repositories): the high-noise expert runs while
# t >= boundary_ratio x 1000.
T2V_BOUNDARY, I2V_BOUNDARY = 0.875, 0.9


def _transformer(in_channels: int, out_channels: int = WAN21_LATENTS, **extra: Any) -> WanTransformer3DModel:
    return WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=12,
        in_channels=in_channels,
        out_channels=out_channels,
        text_dim=T5_HIDDEN,
        freq_dim=256,
        ffn_dim=32,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=1024,
        **extra,
    )


def _wan21_vae() -> AutoencoderKLWan:
    return AutoencoderKLWan(
        base_dim=3,
        z_dim=WAN21_LATENTS,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
    )


def _wan22_vae() -> AutoencoderKLWan:
    """The Wan2.2 VAE's shape: residual blocks, 2x2 patchify of the pixels, 48 latent channels, 16x in space."""
    return AutoencoderKLWan(
        base_dim=3,
        z_dim=WAN22_LATENTS,
        in_channels=12,
        out_channels=12,
        is_residual=True,
        patch_size=2,
        scale_factor_spatial=16,
        scale_factor_temporal=4,
        latents_mean=[0.0] * WAN22_LATENTS,
        latents_std=[1.0] * WAN22_LATENTS,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
    )


def _scheduler(flow_shift: float) -> UniPCMultistepScheduler:
    return UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=1000, flow_shift=flow_shift
    )


def _text_parts() -> dict[str, Any]:
    tokenizer = build_t5_tokenizer()
    text_config = UMT5Config(**t5_dimensions(tokenizer))
    return {"tokenizer": tokenizer, "text_encoder": seeded(7, lambda: UMT5EncoderModel(text_config))}


def build_wan() -> WanPipeline:
    """The tiny Wan2.1 text-to-video pipeline: UMT5 encoder, 3D transformer, Wan VAE (/8 in space, /4 in time)."""
    return WanPipeline(
        **_text_parts(),
        vae=seeded(8, _wan21_vae),
        transformer=seeded(9, lambda: _transformer(WAN21_LATENTS)),
        # The scheduler the Wan2.1 model card configures (flow_shift 3.0: 480p).
        scheduler=_scheduler(3.0),
    )


def _i2v_channels() -> int:
    return 2 * WAN21_LATENTS + 4  # noisy latents, a 4-channel frame mask, the picture's latents


def build_wan_i2v() -> WanImageToVideoPipeline:
    """The tiny Wan2.1 image-to-video pipeline: a CLIP image encoder, and a transformer reading 36 channels
    with image cross-attention."""
    vision = CLIPVisionConfig(
        hidden_size=IMAGE_HIDDEN,
        projection_dim=IMAGE_HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        intermediate_size=16,
        patch_size=4,
    )
    inner = 2 * 12
    return WanImageToVideoPipeline(
        **_text_parts(),
        vae=seeded(8, _wan21_vae),
        transformer=seeded(20, lambda: _transformer(_i2v_channels(), image_dim=IMAGE_HIDDEN, added_kv_proj_dim=inner)),
        image_encoder=seeded(21, lambda: CLIPVisionModelWithProjection(vision)),
        image_processor=CLIPImageProcessor(crop_size=32, size={"shortest_edge": 32}),
        scheduler=_scheduler(3.0),
    )


def build_wan22_t2v() -> WanPipeline:
    """The tiny Wan2.2 T2V-A14B: two expert transformers, switched at the boundary."""
    return WanPipeline(
        **_text_parts(),
        vae=seeded(8, _wan21_vae),
        transformer=seeded(22, lambda: _transformer(WAN21_LATENTS)),
        transformer_2=seeded(23, lambda: _transformer(WAN21_LATENTS)),
        boundary_ratio=T2V_BOUNDARY,
        scheduler=_scheduler(12.0),
    )


def build_wan22_i2v() -> WanImageToVideoPipeline:
    """The tiny Wan2.2 I2V-A14B: two 36-channel experts, no image encoder."""
    return WanImageToVideoPipeline(
        **_text_parts(),
        vae=seeded(8, _wan21_vae),
        transformer=seeded(24, lambda: _transformer(_i2v_channels())),
        transformer_2=seeded(25, lambda: _transformer(_i2v_channels())),
        boundary_ratio=I2V_BOUNDARY,
        scheduler=_scheduler(5.0),
    )


def build_wan22_ti2v() -> WanPipeline:
    """The tiny Wan2.2 TI2V-5B: the Wan2.2 VAE and one 48-channel transformer with expanded timesteps."""
    return WanPipeline(
        **_text_parts(),
        vae=seeded(26, _wan22_vae),
        transformer=seeded(27, lambda: _transformer(WAN22_LATENTS, WAN22_LATENTS)),
        expand_timesteps=True,
        scheduler=_scheduler(5.0),
    )


WAN_BUILDERS: dict[str, Callable[[], WanPipeline | WanImageToVideoPipeline]] = {
    "wan": build_wan,
    "wan-i2v": build_wan_i2v,
    "wan22-t2v": build_wan22_t2v,
    "wan22-i2v": build_wan22_i2v,
    "wan22-ti2v": build_wan22_ti2v,
}
