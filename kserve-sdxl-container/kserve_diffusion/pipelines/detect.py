"""The family of a model folder, read from its model_index.json: what `--model_type auto` serves, and what an
explicit `--model_type` is checked against (a contradiction is a start-up error naming both)."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from ..config import ServerConfig
from ..config.parsing import auto_dtype
from ..errors import ConfigError
from .image_families import IMAGE_FAMILIES
from .loading import looks_like_path, pipeline_index

logger = logging.getLogger("kserve.diffusion")
# model_index.json `_class_name` -> family, for the families of their own modules; the image families' rows
# name theirs.
CLASS_FAMILIES: dict[str, str] = {
    **dict.fromkeys(
        (
            "StableDiffusionXLPipeline",
            "StableDiffusionXLImg2ImgPipeline",
            "StableDiffusionXLInpaintPipeline",
        ),
        "sdxl",
    ),
    **dict.fromkeys(("FluxPipeline", "FluxImg2ImgPipeline", "FluxInpaintPipeline"), "flux"),
    **dict.fromkeys(("WanPipeline", "WanImageToVideoPipeline"), "wan"),
    **{class_name: name for name, family in IMAGE_FAMILIES.items() for class_name in family.class_names},
}


def _has_index(model_id: str) -> bool:
    """A hub id (its index is read from the hub), or a local folder that has one."""
    return not looks_like_path(model_id) or (Path(model_id).expanduser() / "model_index.json").is_file()


def folder_family(model_id: str, token: str | None) -> tuple[str, str]:
    """(family, the pipeline class its model_index.json names); a ConfigError for a class no family serves."""
    index = pipeline_index(model_id, "--model_id", token)
    class_name = str(index.get("_class_name"))
    family = CLASS_FAMILIES.get(class_name)
    if family is None:
        raise ConfigError(
            f"--model_id: {model_id} holds a {class_name}, which no family here serves (known: "
            f"{', '.join(sorted(CLASS_FAMILIES))}); set --model_type if it is one of them"
        )
    return family, class_name


def resolve_model_type(config: ServerConfig) -> ServerConfig:
    """The configuration with --model_type (and --dtype auto) settled: read from the folder for auto, checked
    against the folder when given. A single SDXL checkpoint file without a diffusers folder is SDXL."""
    explicit = config.model_type != "auto"
    single_file_only = config.single_file_model is not None and not _has_index(config.model_id)
    if single_file_only:
        family = config.model_type if explicit else "sdxl"
    elif explicit:
        family = config.model_type
        try:
            found, class_name = folder_family(config.model_id, config.hf_token)
        except ConfigError:  # no readable index: the family's loader says what is missing
            found = family
        if found != family:
            raise ConfigError(
                f"--model_type {family} contradicts --model_id {config.model_id}: its model_index.json names "
                f"{class_name}, a {found} model (leave --model_type out to serve what the folder holds)"
            )
    else:
        family, class_name = folder_family(config.model_id, config.hf_token)
        logger.info("serving --model_type %s: %s names %s", family, config.model_id, class_name)
    if config.model_variant != "auto" and family not in IMAGE_FAMILIES:
        raise ConfigError(
            f"--model_variant {config.model_variant}: applies to {', '.join(IMAGE_FAMILIES)}, not {family} "
            "(FLUX.1 has --flux_variant; Wan variants are read from the folder)"
        )
    if family == "wan" and config.video_model_id:
        raise ConfigError("--video_model_id: adds Wan beside an image model; with a Wan --model_id leave it out")
    dtype = auto_dtype(family, config.device or "cpu") if config.dtype == "auto" else config.dtype
    return replace(config, model_type=family, dtype=dtype)
