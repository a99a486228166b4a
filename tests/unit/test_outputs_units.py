"""Output units: PNG levels and the OpenAI mask convention."""

from __future__ import annotations

import numpy as np
import pytest
from kserve_diffusion import media
from kserve_diffusion.config import parse_config
from kserve_diffusion.errors import ConfigError
from PIL import Image

from tests.helpers import open_image


def test_png_compress_level_trades_bytes_for_time() -> None:
    rng = np.random.default_rng(0)
    smooth = Image.fromarray((rng.random((8, 8, 3)) * 255).astype(np.uint8)).resize((256, 256), Image.BICUBIC)
    fast = media.encode_image(smooth, media.Encoding("png", png_compress_level=1))
    small_file = media.encode_image(smooth, media.Encoding("png", png_compress_level=9))
    assert len(small_file) < len(fast)
    assert np.array_equal(np.asarray(open_image(fast)), np.asarray(open_image(small_file)))  # lossless either way
    assert media.Encoding().png_compress_level == 1 == parse_config(["--model_id", "x"]).png_compress_level
    assert parse_config(["--png_compress_level", "6"]).png_compress_level == 6
    with pytest.raises(ConfigError, match="png_compress_level"):
        parse_config(["--png_compress_level", "10"])


def test_transparent_mask_follows_openai() -> None:
    as_png = media.encode_image
    half = Image.new("RGBA", (8, 8), (10, 20, 30, 255))
    half.paste((0, 0, 0, 0), (0, 0, 4, 8))
    mask = open_image(media.transparent_mask(as_png(half), max_pixels=100) or b"")
    assert mask.mode == "L" and mask.getpixel((0, 0)) == 255 and mask.getpixel((7, 0)) == 0
    opaque = Image.new("RGBA", (8, 8), (255, 255, 255, 255))
    assert media.transparent_mask(as_png(opaque), max_pixels=100) is None  # read as white-on-black instead
    assert media.transparent_mask(as_png(Image.new("RGB", (8, 8))), max_pixels=100) is None
    assert media.transparent_mask(as_png(half), max_pixels=10) is None  # too big: left to the normal checks
    assert media.transparent_mask(b"not an image", max_pixels=100) is None
