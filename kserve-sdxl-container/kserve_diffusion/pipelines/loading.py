"""Loading helpers shared by the families: folders, hub ids and single-file checkpoints."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from diffusers import DiffusionPipeline, ModelMixin

from ..errors import ConfigError

logger = logging.getLogger("kserve.diffusion")


def looks_like_path(model_id: str) -> bool:
    """Whether `model_id` names a local folder or file rather than a hub id."""
    return model_id.startswith(("/", ".", "~")) or Path(model_id).exists()


def load_pretrained(cls: type[DiffusionPipeline], model_id: str, flag: str, **kwargs: Any) -> DiffusionPipeline:
    """`cls.from_pretrained` from a local diffusers folder or a hub id (safetensors weights)."""
    if looks_like_path(model_id):
        folder = Path(model_id).expanduser()
        if not (folder / "model_index.json").is_file():
            raise ConfigError(f"{flag}: {folder} is not a diffusers model folder (no model_index.json)")
        model_id = str(folder)
    logger.info("loading %s from %s", cls.__name__, model_id)
    try:
        return cls.from_pretrained(model_id, use_safetensors=True, **kwargs)
    except OSError as exc:
        raise ConfigError(f"{flag}: could not load {model_id}: {exc}") from exc


def pipeline_index(model_id: str, flag: str, token: str | None = None) -> dict[str, Any]:
    """The model_index.json of a diffusers folder or hub id."""
    if looks_like_path(model_id):
        index = Path(model_id).expanduser() / "model_index.json"
        if not index.is_file():
            raise ConfigError(f"{flag}: {index.parent} is not a diffusers model folder (no model_index.json)")
        model_id = str(index.parent)
    try:
        config = DiffusionPipeline.load_config(model_id, token=token)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{flag}: could not read the model_index.json of {model_id}: {exc}") from exc
    return dict(config)


def present_components(index: Mapping[str, Any]) -> frozenset[str]:
    """The components a model_index.json names a class for."""
    return frozenset(
        name for name, value in index.items() if isinstance(value, list) and len(value) == 2 and value[1] is not None
    )


def load_single_file(
    cls: type[DiffusionPipeline],
    checkpoint: str,
    config_dir: str | None,
    model_flag: str,
    config_flag: str,
    **kwargs: Any,
) -> DiffusionPipeline:
    """`cls.from_single_file`, offline when a local config folder is given.

    `model_flag` / `config_flag` are the flags the operator set the paths with, for error messages.
    """
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise ConfigError(f"{model_flag}: no such file {path}")
    if config_dir is not None:
        if not (Path(config_dir) / "model_index.json").is_file():
            raise ConfigError(f"{config_flag}: {config_dir} is not a diffusers config folder (no model_index.json)")
        logger.info("loading %s from single file %s with configs from %s", cls.__name__, path, config_dir)
        return cls.from_single_file(str(path), config=str(config_dir), local_files_only=True, **kwargs)
    logger.info("loading %s from single file %s (configs from the hub)", cls.__name__, path)
    try:
        return cls.from_single_file(str(path), **kwargs)
    except Exception as exc:  # diffusers raises several types when the hub is out of reach
        raise ConfigError(
            f"could not fetch the configs for {path} from the hub ({type(exc).__name__}); "
            f"offline, set {config_flag} DIR to a local diffusers-format folder with the configs and tokenizers"
        ) from exc


def load_single_file_component(
    cls: type[ModelMixin], checkpoint: str, model_id: str, subfolder: str, flag: str, **kwargs: Any
) -> ModelMixin:
    """One model (e.g. a FLUX transformer) from a single checkpoint file, its config read from
    `model_id`'s `subfolder`: offline when `model_id` is a local folder. Original and diffusers key
    layouts both load (diffusers converts the original one)."""
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise ConfigError(f"{flag}: no such file {path}")
    local = looks_like_path(model_id)
    if local and not (Path(model_id).expanduser() / subfolder / "config.json").is_file():
        raise ConfigError(f"--model_id: {model_id} has no {subfolder}/config.json for the {flag} checkpoint")
    logger.info("loading %s from single file %s with its config from %s", cls.__name__, path, model_id)
    try:
        return cls.from_single_file(
            str(path),
            config=str(Path(model_id).expanduser()) if local else model_id,
            subfolder=subfolder,
            local_files_only=local,
            **kwargs,
        )
    except OSError as exc:
        raise ConfigError(f"{flag}: could not load {path} with the config of {model_id}: {exc}") from exc
