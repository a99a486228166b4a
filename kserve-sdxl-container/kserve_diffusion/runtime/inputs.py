"""Input images for img2img, inpainting and img2video: request fields -> fetched/decoded, sized PIL images.

Downloads run on the event loop (they only wait on the network); decoding and resizing run in the
default executor, so neither the event loop nor the accelerator thread does this work.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass

from PIL.Image import Image, Resampling

from .. import media
from ..api.inputs import NO_INPUTS, InputImages
from ..api.request import TASK_INPUTS, VIDEO_TASKS, GenerationRequest, Limits, fill
from ..api.rules import check_video_volume, given_input, output_size, video_output_size
from ..config import ServerConfig
from ..errors import RequestError
from ..media.fetch import FetchError, FetchPolicy, fetch

_MODES = {"image": "RGB", "mask": "L"}


@dataclass(frozen=True)
class InputPolicy:
    """How input images may be obtained: download rules and the decoded-pixel cap."""

    fetch: FetchPolicy
    max_pixels: int

    @classmethod
    def from_config(cls, config: ServerConfig) -> InputPolicy:
        """The policy a ServerConfig sets."""
        fetch_policy = FetchPolicy(
            allow_private=config.allow_private_image_urls,
            max_bytes=config.max_image_bytes,
            timeout=config.image_fetch_timeout,
        )
        return cls(fetch=fetch_policy, max_pixels=config.max_image_pixels)


class InputLoader:
    """Obtains a request's input images under an InputPolicy."""

    def __init__(self, policy: InputPolicy, limits: Limits, size_multiples: Mapping[str, int]):
        """`size_multiples`: per task, what the output width and height must be multiples of."""
        self.policy = policy
        self.limits = limits
        self.size_multiples = size_multiples

    def _file_bytes(self, field_name: str, value: str | bytes) -> bytes:
        """The image file in an inline value or a data URL (CPU work: runs in the executor)."""
        max_bytes = self.policy.fetch.max_bytes
        try:
            return media.decode_inline(value, max_bytes)
        except media.MediaError as exc:
            raise RequestError(field_name, str(exc)) from None

    async def _download(self, field_name: str, url: str) -> bytes:
        try:
            return await fetch(url, self.policy.fetch)
        except FetchError as exc:
            raise RequestError(field_name, str(exc)) from None

    def _decode(self, field_name: str, data: bytes, mode: str) -> Image:
        try:
            return media.open_image(data, mode, self.policy.max_pixels)
        except media.MediaError as exc:
            raise RequestError(field_name, f"the image {exc}") from None

    def _prepare(
        self, request: GenerationRequest, sources: dict[str, tuple[str, str | bytes]]
    ) -> tuple[GenerationRequest, InputImages]:
        decoded = {}
        for name, (field_name, value) in sources.items():
            downloaded = isinstance(value, bytes) and field_name.endswith("_url")
            data = value if downloaded else self._file_bytes(field_name, value)
            decoded[name] = self._decode(field_name, data, _MODES[name])
        image = decoded["image"]
        task = request.task_type or ""
        sizing = video_output_size if task in VIDEO_TASKS else output_size
        width, height = sizing(image.size, request, self.limits, self.size_multiples[task])
        sized = {
            name: picture
            if picture.size == (width, height)
            else picture.resize((width, height), Resampling.LANCZOS if name == "image" else Resampling.BILINEAR)
            for name, picture in decoded.items()
        }
        if task in VIDEO_TASKS:
            request = fill(request, video_width=width, video_height=height)
            check_video_volume(request, self.limits)
        else:
            request = fill(request, width=width, height=height)
        return request, InputImages(**sized)

    def prepare_now(self, request: GenerationRequest, image: bytes) -> tuple[GenerationRequest, InputImages]:
        """`load` for an image already in memory, on the calling thread (the warm-up's picture)."""
        return self._prepare(request, {"image": ("image", image)})

    async def load(self, request: GenerationRequest) -> tuple[GenerationRequest, InputImages]:
        """The request with its output size settled, and its input images (none for text tasks)."""
        assert request.task_type is not None
        names = TASK_INPUTS[request.task_type]
        if not names:
            return request, NO_INPUTS
        # URL fields hold a URL (downloaded here, to file bytes) or a data URL (decoded with inline values).
        sources: dict[str, tuple[str, str | bytes]] = {}
        for name in names:
            field_name = given_input(request, name)
            assert field_name is not None  # resolve_task made sure
            value = getattr(request, field_name)
            if field_name.endswith("_url") and not media.is_data_url(value):
                value = await self._download(field_name, value)
            sources[name] = (field_name, value)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self._prepare, request, sources)
