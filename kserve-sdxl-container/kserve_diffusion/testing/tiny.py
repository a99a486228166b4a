"""Build tiny random-weight diffusers pipelines for tests, the demo and benchmarks.

Real diffusers/transformers classes with tiny dimensions and tokenizers generated locally, so
nothing is downloaded. The VAE downsamples by 8 like the real one. Every component is built from
its own fixed seed, so the tiny refiner's `text_encoder_2` and VAE, and the tiny inpainting model's
text encoders and VAE, equal the tiny base's.

Usage: python -m kserve_diffusion.testing.tiny --family FAMILY --out DIR [--single-file] [--loras DIR]
FAMILY: sdxl, sdxl-refiner, sdxl-inpaint, flux (dev-like), flux-schnell, the Wan variants: wan (Wan2.1 T2V),
wan-i2v (Wan2.1 I2V), wan22-t2v and wan22-i2v (Wan2.2 A14B: two experts), wan22-ti2v (Wan2.2 TI2V-5B), and the
image families (testing/image_builders.py): qwen_image, qwen_image_edit, qwen_image_edit_plus, flux2 ([dev]),
flux2_klein, flux2_klein_base, z_image (name its folder *turbo* for Turbo's defaults), flux_kontext
--loras DIR also writes tiny LoRA adapters for the family into DIR (see testing/adapters.py).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from diffusers import (
    DiffusionPipeline,
    FluxPipeline,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLInpaintPipeline,
    StableDiffusionXLPipeline,
)
from diffusers.utils import logging as diffusers_logging
from safetensors.torch import save_file

from . import ldm_export
from .adapters import write_adapters
from .builders import build_flux, build_sdxl_base, build_sdxl_inpaint, build_sdxl_refiner, flux_transformer
from .image_builders import BUILDERS as IMAGE_BUILDERS
from .image_builders import folder_fixes
from .tokenizers import build_t5_tokenizer, build_tokenizer
from .wan_builders import WAN_BUILDERS, build_wan

__all__ = [
    "BUILDERS",
    "WAN_BUILDERS",
    "FAMILIES",
    "build_flux",
    "build_sdxl_base",
    "build_sdxl_inpaint",
    "build_sdxl_refiner",
    "build_t5_tokenizer",
    "build_tokenizer",
    "build_wan",
    "flux_transformer",
    "main",
    "write",
]


SDXLPipelines = StableDiffusionXLPipeline | StableDiffusionXLImg2ImgPipeline | StableDiffusionXLInpaintPipeline
BUILDERS: dict[str, Callable[[], DiffusionPipeline]] = {
    "sdxl": build_sdxl_base,
    "sdxl-refiner": build_sdxl_refiner,
    "sdxl-inpaint": build_sdxl_inpaint,
    "flux": build_flux,
    "flux-schnell": lambda: build_flux(schnell=True),
    **WAN_BUILDERS,
    **IMAGE_BUILDERS,
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


ADAPTER_FAMILIES = {
    "sdxl": "sdxl",
    "flux": "flux",
    "flux-schnell": "flux",
    **dict.fromkeys(WAN_BUILDERS, "wan"),
    "qwen_image": "qwen_image",
    "qwen_image_edit_plus": "qwen_image",
    "flux2": "flux2",
    "flux2_klein": "flux2",
    "z_image": "z_image",
}


def write(family: str, out: Path, single_file: bool = False, loras: Path | None = None) -> Path:
    """Write the tiny `family` pipeline to `out` (and its tiny LoRA adapters to `loras`); return the path to
    serve (folder or file)."""
    if family not in BUILDERS:
        raise ValueError(f"family: expected one of {', '.join(FAMILIES)}, got {family!r}")
    if single_file and family not in SINGLE_FILE_FAMILIES:
        raise ValueError(f"--single-file: only for {', '.join(SINGLE_FILE_FAMILIES)}, got {family!r}")
    if loras is not None and family not in ADAPTER_FAMILIES:
        raise ValueError(f"--loras: adapters are made for {', '.join(ADAPTER_FAMILIES)}, got {family!r}")
    pipeline = BUILDERS[family]()
    if loras is not None:
        write_adapters(pipeline, ADAPTER_FAMILIES[family], loras)
    out.mkdir(parents=True, exist_ok=True)
    if not single_file:
        pipeline.save_pretrained(out, safe_serialization=True)
        folder_fixes(family, out)
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
    parser.add_argument(
        "--loras",
        type=Path,
        help="also write tiny LoRA adapters for the family here: <family>-style.safetensors, <family>-detail/ "
        "(diffusers layout) and <family>-kohya.safetensors (kohya layout)",
    )
    args = parser.parse_args(argv)
    diffusers_logging.disable_progress_bar()
    try:
        path = write(args.family, args.out, args.single_file, args.loras)
    except ValueError as exc:
        parser.error(str(exc))
    print(path)


if __name__ == "__main__":
    main()
