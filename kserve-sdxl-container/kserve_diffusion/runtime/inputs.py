"""Input images for img2img, inpainting, edit and img2video: request fields -> fetched/decoded, sized PIL images.

Downloads run on the event loop (they only wait on the network); decoding and resizing run in the
default executor, so neither the event loop nor the accelerator thread does this work.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from dataclasses import dataclass

from PIL.Image import Image, Resampling

from .. import media
from ..api.inputs import NO_INPUTS, InputImages
from ..api.request import LIST_TASKS, TASK_INPUTS, VIDEO_TASKS, GenerationRequest, Limits, fill
from ..api.rules import check_video_volume, given_input, output_size, video_output_size
from ..config import ServerConfig
from ..errors import RequestError
from ..marks.credentials import Ingredient, ingredient
from ..media.fetch import FetchError, FetchPolicy, fetch

_MODES = {"image": "RGB", "mask": "L"}
_RELATIONSHIPS = {"image": "parentOf", "mask": "inputTo"}  # what each input is to the output, in C2PA terms
PICTURE_TASKS = LIST_TASKS
_OTHER_SCHEME = re.compile(
    r"([a-zA-Z][a-zA-Z0-9+.-]*)://"
)  # tasks whose pipelines size their input pictures themselves


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

    def _pictures(self, pictures: list[tuple[str, str | bytes, bool]]) -> tuple[tuple[Image, ...], list[Ingredient]]:
        """An edit's pictures, decoded one by one: together at most twice --max_image_pixels (what an inpainting
        request's picture and mask may hold), each checked from its header before its pixels are decoded."""
        budget = 2 * self.policy.max_pixels
        decoded, ingredients = [], []
        for index, (field_name, value, downloaded) in enumerate(pictures):
            data = value if downloaded else self._file_bytes(field_name, value)
            pixels = media.header_pixels(data)  # None when unreadable: decoding says why
            if pixels is not None and pixels > budget:
                raise RequestError(
                    "images",
                    f"the pictures together may hold at most {2 * self.policy.max_pixels} pixels (twice "
                    f"--max_image_pixels); {field_name} has {pixels}, only {budget} remain",
                )
            picture = self._decode(field_name, data, "RGB")
            budget -= picture.width * picture.height
            decoded.append(picture)
            ingredients.append(ingredient(field_name, data, "parentOf" if index == 0 else "componentOf"))
        return tuple(decoded), ingredients

    def _prepare(
        self,
        request: GenerationRequest,
        sources: dict[str, tuple[str, str | bytes]],
        pictures: list[tuple[str, str | bytes, bool]] | None = None,
    ) -> tuple[GenerationRequest, InputImages]:
        decoded, ingredients = {}, []
        for name, (field_name, value) in sources.items():
            downloaded = isinstance(value, bytes) and field_name.endswith("_url")
            data = value if downloaded else self._file_bytes(field_name, value)
            decoded[name] = self._decode(field_name, data, _MODES[name])
            ingredients.append(ingredient(field_name, data, _RELATIONSHIPS[name]))
        task = request.task_type or ""
        if pictures is not None:  # edit from several pictures: the output follows the first
            edited, ingredients = self._pictures(pictures)
            width, height = output_size(edited[0].size, request, self.limits, self.size_multiples[task])
            inputs = InputImages(image=edited[0], pictures=edited, ingredients=tuple(ingredients))
            return fill(request, width=width, height=height), inputs
        image = decoded["image"]
        sizing = video_output_size if task in VIDEO_TASKS else output_size
        width, height = sizing(image.size, request, self.limits, self.size_multiples[task])
        if task in PICTURE_TASKS:  # the pipeline sizes the picture it edits from; only the output size is ours
            request = fill(request, width=width, height=height)
            return request, InputImages(image=image, pictures=(image,), ingredients=tuple(ingredients))
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
        return request, InputImages(**sized, ingredients=tuple(ingredients))

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
        loop = asyncio.get_running_loop()
        if given_input(request, "image") == "images":
            assert request.images is not None
            pictures = [await self._list_item(index, value) for index, value in enumerate(request.images)]
            return await loop.run_in_executor(None, self._prepare, request, {}, pictures)
        for name in names:
            field_name = given_input(request, name)
            assert field_name is not None  # resolve_task made sure
            value = getattr(request, field_name)
            if field_name.endswith("_url") and not media.is_data_url(value):
                value = await self._download(field_name, value)
            sources[name] = (field_name, value)
        return await loop.run_in_executor(None, self._prepare, request, sources)

    async def _list_item(self, index: int, value: str | bytes) -> tuple[str, str | bytes, bool]:
        """(field name, value, downloaded) of one of `images`: an http(s) URL is downloaded under the fetch
        rules, anything else (base64, a data URL, v2 file bytes) is decoded with the inline values."""
        field_name = f"images[{index}]"
        if isinstance(value, str) and value[:8].lower().startswith(("http://", "https://")):
            return field_name, await self._download(field_name, value), True
        scheme = _OTHER_SCHEME.match(value[:40]) if isinstance(value, str) else None
        if scheme:  # file://, ftp://, ...: never read
            raise RequestError(field_name, f"only http(s) and data URLs are read, got a {scheme[1].lower()}: URL")
        return field_name, value, False
