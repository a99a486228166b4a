"""The decoded input images a generation reads (img2img, inpaint), already at the output size."""

from __future__ import annotations

from dataclasses import dataclass

from PIL.Image import Image


@dataclass(frozen=True)
class InputImages:
    """The decoded input images of one request, already at the output size."""

    image: Image | None = None
    mask: Image | None = None


NO_INPUTS = InputImages()  # what text-only tasks get
