"""The input images of a request: the `images` list as sent, and the decoded pictures a generation reads."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from PIL.Image import Image

from ..marks.credentials import Ingredient
from .messages import CompleteProblem, shown

MAX_EDIT_IMAGES = 10  # the most pictures any family edits from (FLUX.2 [dev]); each family has its own limit


@dataclass(frozen=True)
class InputImages:
    """The decoded input images of one request, already at the output size."""

    image: Image | None = None
    mask: Image | None = None
    pictures: tuple[Image, ...] = ()  # edit: every picture, as decoded (the pipeline sizes its references)
    ingredients: tuple[Ingredient, ...] = ()  # the input files by hash, for the outputs' C2PA manifests


NO_INPUTS = InputImages()  # what text-only tasks get


def read_images(value: Any) -> tuple[str | bytes, ...] | None:
    """The `images` of an edit: a list of 1 to MAX_EDIT_IMAGES non-empty pictures (text or, over v2, file bytes)."""
    if value is None:
        return None
    if not isinstance(value, (list, tuple)):
        raise CompleteProblem(f'must be a list of pictures like ["data:image/png;base64,...", ...], got {shown(value)}')
    if not 1 <= len(value) <= MAX_EDIT_IMAGES:
        raise CompleteProblem(f"must hold 1 to {MAX_EDIT_IMAGES} pictures, got {len(value)}")
    for index, item in enumerate(value):
        if not isinstance(item, (str, bytes)) or not item:
            raise CompleteProblem(
                f"[{index}] must be a picture: base64, a data URL or an http(s) URL, got {shown(item)}"
            )
    return tuple(value)
