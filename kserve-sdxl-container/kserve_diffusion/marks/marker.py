"""Which marks the server applies (--provenance) and applying them to one request's pictures and files.

Everything here runs in the encode pool, after the generation: the watermark goes into the pixels before they
are encoded, the signed credentials into each encoded file."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image as PILImage
from PIL.Image import Image

from .. import __version__, media
from ..errors import ConfigError, MarkingFailed
from .credentials import CredentialSigner, Ingredient, SigningIdentity, generated_identity, load_identity, manifest
from .watermark import IMAGE_STRENGTH, VIDEO_STRENGTH, can_carry, watermarked

logger = logging.getLogger("kserve.diffusion")
MARKS = ("c2pa", "watermark")
NO_MARKS_WORD = "off"
GENERATOR = {"name": "kserve-diffusion", "version": __version__}
_CHECK = {"generator": GENERATOR, "model": "start-up check", "family": "-", "task": "text2img"}  # the probe's claim


def parse_marks(text: str) -> frozenset[str]:
    """`c2pa,watermark`, either alone, or `off` -> the set of marks; a ValueError says what is allowed."""
    words = [word.strip().lower() for word in str(text).split(",") if word.strip()]
    if words == [NO_MARKS_WORD]:
        return frozenset()
    unknown = [word for word in words if word not in MARKS]
    if not words or unknown:
        raise ValueError(f"expected a comma list of {' and '.join(MARKS)}, or {NO_MARKS_WORD}, got {str(text)[:100]!r}")
    return frozenset(words)


def marks_text(marks: frozenset[str]) -> str:
    """The set as --provenance and the `provenance` field write it (MARKS order; `off` when empty)."""
    return ",".join(mark for mark in MARKS if mark in marks) or NO_MARKS_WORD


@dataclass(frozen=True)
class Marking:
    """The marks of one request's files: what to apply, and what its credentials claim."""

    watermark: bool = False
    signer: CredentialSigner | None = None
    claim: dict[str, Any] | None = None
    ingredients: tuple[Ingredient, ...] = ()

    def pictures(self, images: Sequence[Image]) -> list[Image]:
        """The images with the watermark (when on and they are large enough)."""
        if not self.watermark:
            return list(images)
        return [PILImage.fromarray(self._watermarked(np.asarray(image.convert("RGB")))) for image in images]

    def frames(self, frames: np.ndarray) -> np.ndarray:
        """A video's frames (F, H, W, 3), each with the watermark."""
        if not self.watermark or not can_carry(*frames.shape[1:3]):
            return frames
        return np.stack([self._watermarked(frame, VIDEO_STRENGTH) for frame in frames])

    def _watermarked(self, rgb: np.ndarray, strength: int = IMAGE_STRENGTH) -> np.ndarray:
        try:
            return watermarked(rgb, strength)
        except Exception as exc:  # never an unmarked file sent silently
            logger.exception("watermarking failed")
            raise MarkingFailed(
                f"watermarking the output failed ({type(exc).__name__}); no unmarked file is sent"
            ) from None

    def file(self, data: bytes, output_format: str, index: int = 0) -> bytes:
        """An encoded file with its signed C2PA manifest (unchanged without c2pa)."""
        if self.signer is None or self.claim is None:
            return data
        definition = manifest(f"{self.claim['task']}-{index}.{output_format}", self.claim, self.ingredients)
        try:
            return self.signer.sign(data, media.content_type(output_format), definition)
        except Exception as exc:
            logger.error("signing the C2PA content credentials failed: %s: %s", type(exc).__name__, str(exc)[:500])
            raise MarkingFailed(
                f"signing the output's C2PA content credentials failed ({type(exc).__name__}); no unmarked file is "
                "sent, the server log has details"
            ) from None


NO_MARKING = Marking()


class Marks:
    """The server's marks (--provenance) and its C2PA signer."""

    def __init__(self, marks: frozenset[str], signer: CredentialSigner | None, include_parameters: bool) -> None:
        self.marks = marks
        self.signer = signer
        self.include_parameters = include_parameters

    def marking(
        self,
        marks: frozenset[str],
        model: str,
        family: str,
        task: str,
        seed: int,
        ingredients: tuple[Ingredient, ...] = (),
    ) -> Marking:
        """What to apply to one request's files: `marks` (the request's, within the server's)."""
        claim: dict[str, Any] = {"generator": GENERATOR, "model": model, "family": family, "task": task}
        if self.include_parameters:
            claim["seed"] = seed
        signer = self.signer if "c2pa" in marks else None
        return Marking("watermark" in marks, signer, claim if signer else None, ingredients)


NO_MARKS = Marks(frozenset(), None, False)  # a service built without open_marks (unit tests): files unmarked


def open_marks(
    provenance: str,
    cert: str | None,
    key: str | None,
    tsa_url: str | None = None,
    include_parameters: bool = False,
) -> Marks:
    """The server's marks from its settings; a certificate, key or library that cannot sign stops the start
    (ConfigError naming the flag)."""
    try:
        marks = parse_marks(provenance)
    except ValueError as exc:
        raise ConfigError(f"--provenance: {exc}") from None
    if "watermark" in marks:
        try:
            import imwatermark.dwtDctSvd  # noqa: F401
            import pywt  # noqa: F401
        except ImportError as exc:
            raise ConfigError(
                f"--provenance watermark: cannot import {exc.name} (make install puts it in: pip install --no-deps "
                "invisible-watermark==0.2.0; its opencv-python wants GUI libraries, opencv-python-headless serves it)"
            ) from None
    if "c2pa" not in marks:
        return Marks(marks, None, include_parameters)
    if (cert is None) != (key is None):
        raise ConfigError("--c2pa_cert and --c2pa_key: give both (the chain and its key), or neither")
    identity: SigningIdentity = load_identity(cert, key) if cert and key else generated_identity()
    flag = "--c2pa_cert" if not identity.generated else "--provenance c2pa"
    try:  # a chain C2PA refuses (usage, expiry, algorithm) stops the start, not the first request
        probe = media.encode_image(PILImage.new("RGB", (8, 8)))
        CredentialSigner(identity).sign(probe, "image/png", manifest("check.png", _CHECK))
    except Exception as exc:
        raise ConfigError(f"{flag}: C2PA cannot sign with this certificate and key: {str(exc)[:300]}") from None
    if identity.generated:
        logger.warning(
            "C2PA: signing with a certificate made at start-up: the credentials validate, but read as untrusted "
            "until --c2pa_cert and --c2pa_key name a real one (docs/deploy.md)"
        )
    return Marks(marks, CredentialSigner(identity, tsa_url), include_parameters)
