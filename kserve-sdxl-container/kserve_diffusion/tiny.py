"""Build tiny random-weight diffusers pipelines for tests, the demo and benchmarks.

Real diffusers/transformers classes with tiny dimensions and tokenizers generated locally, so
nothing is downloaded. The VAE downsamples by 8 like the real one. Every component is built from
its own fixed seed, so the tiny refiner's `text_encoder_2` and VAE, and the tiny inpainting model's
text encoders and VAE, equal the tiny base's.

Usage: python -m kserve_diffusion.tiny --family FAMILY --out DIR [--single-file]
FAMILY: sdxl, sdxl-refiner, sdxl-inpaint, flux (dev-like), flux-schnell, wan
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
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
    StableDiffusionXLInpaintPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
    UniPCMultistepScheduler,
    WanPipeline,
    WanTransformer3DModel,
)
from diffusers.utils import logging as diffusers_logging
from safetensors.torch import save_file
from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    PreTrainedTokenizerFast,
    T5Config,
    T5EncoderModel,
    UMT5Config,
    UMT5EncoderModel,
)
from transformers.convert_slow_tokenizer import bytes_to_unicode

from . import ldm_export

CLIP_HIDDEN = 32
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


def _seeded(seed: int, build: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build().eval()


def build_tokenizer() -> CLIPTokenizer:
    """A byte-level CLIP tokenizer with no merges: every character is a token."""
    alphabet = list(bytes_to_unicode().values())
    tokens = alphabet + [f"{char}</w>" for char in alphabet] + ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={token: i for i, token in enumerate(tokens)}, merges=[], model_max_length=77)


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
        vae=_seeded(1, _vae),
        text_encoder=_seeded(2, lambda: CLIPTextModel(_text_config(tokenizer, CLIP_HIDDEN, 2))),
        tokenizer=tokenizer,
        text_encoder_2=_seeded(
            3, lambda: CLIPTextModelWithProjection(_text_config(tokenizer, OPEN_CLIP_HIDDEN, OPEN_CLIP_LAYERS))
        ),
        tokenizer_2=build_tokenizer(),
        # base conditioning: original size, crop, target size -> six time ids
        unet=_seeded(4, lambda: _unet(cross_attention_dim=CLIP_HIDDEN + OPEN_CLIP_HIDDEN, time_ids=6)),
        scheduler=_scheduler(),
    )


def build_sdxl_refiner() -> StableDiffusionXLImg2ImgPipeline:
    """The tiny SDXL refiner: `text_encoder_2` and VAE identical to the tiny base's."""
    tokenizer = build_tokenizer()
    return StableDiffusionXLImg2ImgPipeline(
        vae=_seeded(1, _vae),
        text_encoder=None,
        tokenizer=None,
        text_encoder_2=_seeded(
            3, lambda: CLIPTextModelWithProjection(_text_config(tokenizer, OPEN_CLIP_HIDDEN, OPEN_CLIP_LAYERS))
        ),
        tokenizer_2=tokenizer,
        # refiner conditioning adds an aesthetic score: five time ids
        unet=_seeded(5, lambda: _unet(cross_attention_dim=OPEN_CLIP_HIDDEN, time_ids=5)),
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
        unet=_seeded(
            6,
            lambda: _unet(
                cross_attention_dim=CLIP_HIDDEN + OPEN_CLIP_HIDDEN, time_ids=6, in_channels=INPAINT_IN_CHANNELS
            ),
        ),
        scheduler=_scheduler(),
    )


T5_HIDDEN = 32
WAN_MAX_TOKENS = 512  # WanPipeline's max_sequence_length


def build_t5_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level tokenizer with T5's special tokens (pad 0, eos 1, unk 2), built in memory."""
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{chr(c): i + 3 for i, c in enumerate(range(32, 127))}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=WAN_MAX_TOKENS,
    )


def _t5_dimensions(tokenizer: PreTrainedTokenizerFast) -> dict[str, int | None]:
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


def build_wan() -> WanPipeline:
    """The tiny Wan2.1 text-to-video pipeline: UMT5 encoder, 3D transformer, Wan VAE (/8 in space, /4 in time)."""
    tokenizer = build_t5_tokenizer()
    text_config = UMT5Config(**_t5_dimensions(tokenizer))
    return WanPipeline(
        tokenizer=tokenizer,
        text_encoder=_seeded(7, lambda: UMT5EncoderModel(text_config)),
        vae=_seeded(
            8,
            lambda: AutoencoderKLWan(
                base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
            ),
        ),
        transformer=_seeded(
            9,
            lambda: WanTransformer3DModel(
                patch_size=(1, 2, 2),
                num_attention_heads=2,
                attention_head_dim=12,
                in_channels=16,
                out_channels=16,
                text_dim=T5_HIDDEN,
                freq_dim=256,
                ffn_dim=32,
                num_layers=2,
                cross_attn_norm=True,
                qk_norm="rms_norm_across_heads",
                rope_max_seq_len=1024,
            ),
        ),
        # The scheduler the Wan2.1 model card configures (flow_shift 3.0: 480p).
        scheduler=UniPCMultistepScheduler(
            prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=1000, flow_shift=3.0
        ),
    )


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
    t5_config = T5Config(**_t5_dimensions(t5_tokenizer))
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
        vae=_seeded(10, _flux_vae),
        text_encoder=_seeded(11, lambda: CLIPTextModel(_text_config(tokenizer, CLIP_HIDDEN, 2))),
        tokenizer=tokenizer,
        text_encoder_2=_seeded(12, lambda: T5EncoderModel(t5_config)),
        tokenizer_2=t5_tokenizer,
        transformer=_seeded(13, lambda: flux_transformer(guidance=not schnell)),
    )


SDXLPipelines = StableDiffusionXLPipeline | StableDiffusionXLImg2ImgPipeline | StableDiffusionXLInpaintPipeline
BUILDERS: dict[str, Callable[[], SDXLPipelines | FluxPipeline | WanPipeline]] = {
    "sdxl": build_sdxl_base,
    "sdxl-refiner": build_sdxl_refiner,
    "sdxl-inpaint": build_sdxl_inpaint,
    "flux": build_flux,
    "flux-schnell": lambda: build_flux(schnell=True),
    "wan": build_wan,
}
SDXL_FAMILIES = ("sdxl", "sdxl-refiner", "sdxl-inpaint")
FLUX_FAMILIES = ("flux", "flux-schnell")
SINGLE_FILE_FAMILIES = SDXL_FAMILIES + FLUX_FAMILIES
FAMILIES = tuple(BUILDERS)


def single_file_state(pipeline: SDXLPipelines) -> dict:
    """The whole pipeline as one state dict in the original SDXL checkpoint layout."""
    state = ldm_export.unet_to_ldm(pipeline.unet.state_dict(), pipeline.unet.config.layers_per_block)
    state.update(ldm_export.vae_to_ldm(pipeline.vae.state_dict(), len(pipeline.vae.config.down_block_types)))
    if pipeline.text_encoder is not None:
        state.update(ldm_export.clip_to_ldm(pipeline.text_encoder.state_dict(), "conditioner.embedders.0."))
        open_clip_prefix = "conditioner.embedders.1.model."
    else:  # the refiner has only the OpenCLIP encoder, as embedder 0
        open_clip_prefix = "conditioner.embedders.0.model."
    state.update(ldm_export.open_clip_to_ldm(pipeline.text_encoder_2.state_dict(), open_clip_prefix))
    return {key: tensor.contiguous() for key, tensor in state.items()}


def _write_flux_single_file(pipeline: FluxPipeline, out: Path) -> Path:
    """OUT/model.safetensors: the transformer alone (as flux1-dev.safetensors is); OUT/components/: the
    other components with weights and the transformer's config only (what --model_id gives beside it).

    The checkpoint keeps diffusers' key names: diffusers' converter of the original layout assumes the
    real 3072-wide transformer (`ldm_export.flux_transformer_to_original` writes that layout for it).
    """
    components = out / "components"
    shutil.rmtree(components, ignore_errors=True)
    pipeline.save_pretrained(components, safe_serialization=True)
    for weights in (components / "transformer").glob("*.safetensors*"):
        weights.unlink()
    checkpoint = out / "model.safetensors"
    state = {key: tensor.contiguous() for key, tensor in pipeline.transformer.state_dict().items()}
    save_file(state, str(checkpoint), metadata={"format": "pt"})
    return checkpoint


def write(family: str, out: Path, single_file: bool = False) -> Path:
    """Write the tiny `family` pipeline to `out`; return the path to serve (folder or file)."""
    if family not in BUILDERS:
        raise ValueError(f"family: expected one of {', '.join(FAMILIES)}, got {family!r}")
    if single_file and family not in SINGLE_FILE_FAMILIES:
        raise ValueError(f"--single-file: only for {', '.join(SINGLE_FILE_FAMILIES)}, got {family!r}")
    pipeline = BUILDERS[family]()
    out.mkdir(parents=True, exist_ok=True)
    if not single_file:
        pipeline.save_pretrained(out, safe_serialization=True)
        return out
    if family in FLUX_FAMILIES:
        return _write_flux_single_file(pipeline, out)
    # The config folder is the diffusers layout without weights: what --single_file_config expects.
    config_dir = out / "config"
    with tempfile.TemporaryDirectory() as scratch:
        pipeline.save_pretrained(scratch, safe_serialization=True)
        shutil.rmtree(config_dir, ignore_errors=True)
        shutil.copytree(scratch, config_dir, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    checkpoint = out / "model.safetensors"
    save_file(single_file_state(pipeline), str(checkpoint), metadata={"format": "pt"})
    (out / "tiny.json").write_text(json.dumps({"family": family, "single_file": True}))
    return checkpoint


def main(argv: list[str] | None = None) -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=FAMILIES, required=True)
    parser.add_argument("--out", type=Path, required=True, help="folder to write")
    parser.add_argument(
        "--single-file",
        action="store_true",
        help="SDXL: write OUT/model.safetensors (original SDXL key layout) and OUT/config/ (configs, no weights); "
        "FLUX: OUT/model.safetensors (the transformer) and OUT/components/ (the rest, for --model_id)",
    )
    args = parser.parse_args(argv)
    diffusers_logging.disable_progress_bar()
    try:
        path = write(args.family, args.out, args.single_file)
    except ValueError as exc:
        parser.error(str(exc))
    print(path)


if __name__ == "__main__":
    main()
