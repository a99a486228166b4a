"""The Wan models one `--model_type wan` serves, told apart from the loaded folder, with their defaults.

Wan2.1 T2V (1.3B, 14B) and I2V (14B, with a CLIP image encoder), Wan2.2 T2V-A14B and I2V-A14B (two expert
transformers switched at `boundary_ratio`) and Wan2.2 TI2V-5B (its own VAE, 16x in space, text or image to
video). The defaults are the authors' (the Wan2.1/Wan2.2 repositories' configs and model cards), except
Wan2.1 T2V, which keeps this server's earlier defaults so existing clients see no change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from diffusers import DiffusionPipeline

from ..errors import ConfigError


@dataclass(frozen=True)
class WanVariant:
    """One Wan model: the tasks it serves and the defaults of a request that leaves them out."""

    title: str
    tasks: tuple[str, ...]
    size_multiple: int  # VAE's spatial factor x the transformer's 2x2 patches
    steps: int
    num_frames: int
    fps: int
    video_width: int  # text2video's default size
    video_height: int
    video_resolution: str  # img2video's default area (the picture's aspect ratio at it)
    guidance_scale: float
    guidance_scale_2: float | None = None  # the low-noise expert's (A14B only)
    flow_shift: float | None = None  # None: 3.0 below 720p, 5.0 from 720p (Wan2.1's advice)


VARIANTS: dict[str, WanVariant] = {
    "wan2.1-t2v": WanVariant(
        "Wan2.1 text-to-video",
        ("text2video",),
        size_multiple=16,
        steps=25,
        num_frames=25,
        fps=8,
        video_width=704,
        video_height=480,
        video_resolution="480p",
        guidance_scale=6.0,
    ),
    "wan2.1-i2v": WanVariant(
        "Wan2.1 image-to-video 14B",
        ("img2video",),
        size_multiple=16,
        steps=40,
        num_frames=81,
        fps=16,
        video_width=832,
        video_height=480,
        video_resolution="480p",
        guidance_scale=5.0,
    ),
    "wan2.2-t2v-a14b": WanVariant(
        "Wan2.2 text-to-video A14B",
        ("text2video",),
        size_multiple=16,
        steps=40,
        num_frames=81,
        fps=16,
        video_width=1280,
        video_height=720,
        video_resolution="720p",
        guidance_scale=4.0,
        guidance_scale_2=3.0,
        flow_shift=12.0,
    ),
    "wan2.2-i2v-a14b": WanVariant(
        "Wan2.2 image-to-video A14B",
        ("img2video",),
        size_multiple=16,
        steps=40,
        num_frames=81,
        fps=16,
        video_width=1280,
        video_height=720,
        video_resolution="720p",
        guidance_scale=3.5,
        guidance_scale_2=3.5,
        flow_shift=5.0,
    ),
    "wan2.2-ti2v-5b": WanVariant(
        "Wan2.2 text/image-to-video 5B",
        ("text2video", "img2video"),
        size_multiple=32,
        steps=50,
        num_frames=121,
        fps=24,
        video_width=1280,
        video_height=704,
        video_resolution="720p",
        guidance_scale=5.0,
        flow_shift=5.0,
    ),
}


def detect_variant(pipeline: DiffusionPipeline) -> tuple[str, str]:
    """(variant, why) from the loaded modules: the transformer's input channels, a second expert, the
    expanded timesteps of TI2V-5B. A folder whose parts contradict each other is a ConfigError."""
    first = pipeline.transformer if pipeline.transformer is not None else pipeline.transformer_2
    z_dim, in_channels = pipeline.vae.config.z_dim, first.config.in_channels
    config: Any = pipeline.config
    if config.get("expand_timesteps"):
        if in_channels != z_dim:
            raise ConfigError(f"Wan folder: expand_timesteps with a transformer of {in_channels} input channels")
        return "wan2.2-ti2v-5b", f"expand_timesteps and a VAE of {z_dim} latent channels"
    # Image-to-video transformers read the noisy latents, a 4-channel frame mask and the picture's latents.
    image_conditioned = in_channels == 2 * z_dim + 4
    if not image_conditioned and in_channels != z_dim:
        raise ConfigError(f"Wan folder: a transformer of {in_channels} input channels with a {z_dim}-channel VAE")
    if getattr(pipeline, "transformer_2", None) is not None:
        boundary = config.get("boundary_ratio")
        if boundary is None or pipeline.transformer is None:
            raise ConfigError("Wan folder: two transformers need both experts and a boundary_ratio in model_index.json")
        name = "wan2.2-i2v-a14b" if image_conditioned else "wan2.2-t2v-a14b"
        return name, f"two expert transformers switched at boundary_ratio {boundary}"
    if image_conditioned:
        if first.config.image_dim is not None and getattr(pipeline, "image_encoder", None) is None:
            raise ConfigError("Wan folder: an image-to-video transformer with image_dim needs the image_encoder")
        return "wan2.1-i2v", f"its transformer reads {in_channels} channels (noise, frame mask, picture)"
    return "wan2.1-t2v", f"its transformer reads the {z_dim} noise channels only"
