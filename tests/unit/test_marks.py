"""The marks without a server: the watermark's embedding against invisible-watermark's own, its decoding after
the server's encoders, its PSNR; --provenance and the request's `provenance`; manifests; signing failures."""

from __future__ import annotations

import io

import numpy as np
import pytest
from imwatermark.dwtDctSvd import EmbedDwtDctSvd
from kserve_diffusion import media
from kserve_diffusion.api.request import Limits, parse_request
from kserve_diffusion.config import defaults
from kserve_diffusion.errors import ConfigError, MarkingFailed, RequestError
from kserve_diffusion.marks import marks_text, open_marks, parse_marks, watermark
from kserve_diffusion.marks.credentials import Ingredient, manifest
from PIL import Image

from benchmarks.encoding import photo_like
from tests.provenance import credentials, psnr, watermark_bits


@pytest.mark.parametrize("shape", [(64, 64), (130, 97), (256, 208)])
def test_the_embedding_is_the_packages_own(shape: tuple[int, int]) -> None:
    band = (np.random.default_rng(3).random(shape) * 600).astype(np.float32)
    theirs, ours = band.copy(), band.copy()
    bits = list(watermark.BITS)
    EmbedDwtDctSvd(watermarks=bits, wmLen=48, scales=[36, 0, 0], block=4).encode_frame(theirs, 36)
    watermark.embed(ours, 36)
    assert np.abs(theirs - ours).max() < 1e-2
    assert not np.array_equal(band, ours)


@pytest.mark.parametrize("side", [256, 1024])
def test_the_watermark_survives_the_servers_encoders_and_keeps_40_db(side: int) -> None:
    picture = np.asarray(photo_like(side, side))
    marked = watermark.watermarked(picture)
    assert psnr(picture, marked) > 40
    for output_format in ("png", "jpeg", "webp"):  # JPEG and WebP at the default quality, 90
        encoded = media.encode_image(Image.fromarray(marked), media.Encoding(output_format))
        decoded = np.asarray(Image.open(io.BytesIO(encoded)).convert("RGB"))
        assert watermark_bits(decoded) == watermark.MESSAGE, output_format
    assert watermark_bits(picture) != watermark.MESSAGE


def test_pictures_too_small_for_the_decoder_are_left_as_they_are() -> None:
    small = np.asarray(photo_like(128, 128))
    assert watermark.watermarked(small) is small and not watermark.can_carry(128, 128)


def test_provenance_settings_and_their_text() -> None:
    assert parse_marks("c2pa,watermark") == parse_marks(" Watermark , c2pa ") == frozenset({"c2pa", "watermark"})
    assert parse_marks("off") == frozenset() and marks_text(frozenset()) == "off"
    assert marks_text(frozenset({"watermark", "c2pa"})) == "c2pa,watermark"
    for bad in ("", "c2pa,off", "stamp", "c2pa;watermark"):
        with pytest.raises(ValueError, match="expected a comma list of c2pa and watermark, or off"):
            parse_marks(bad)
    with pytest.raises(ConfigError, match="--provenance: expected"):
        open_marks("everything", None, None)


def test_a_request_may_narrow_the_marks_only_where_allowed() -> None:
    strict = Limits.from_config(defaults())
    allowing = Limits.from_config(defaults(allow_unmarked_requests=True))
    only_c2pa = Limits.from_config(defaults(provenance="c2pa"))
    assert parse_request({"prompt": "x", "provenance": "watermark, c2pa"}, strict).provenance == "c2pa,watermark"
    assert parse_request({"prompt": "x", "provenance": "OFF"}, allowing).provenance == "off"
    with pytest.raises(RequestError, match="provenance: this server marks every output with c2pa,watermark"):
        parse_request({"prompt": "x", "provenance": "c2pa"}, strict)
    with pytest.raises(RequestError, match=r"provenance: this server applies only c2pa \(its --provenance\)"):
        parse_request({"prompt": "x", "provenance": "c2pa,watermark"}, only_c2pa)
    with pytest.raises(RequestError, match="provenance: "):
        parse_request({"prompt": "x", "provenance": 3}, strict)


def test_manifests_say_created_or_edited_from_ingredients_by_hash() -> None:
    claim = {"generator": {"name": "kserve-diffusion", "version": "0"}, "model": "m", "family": "sdxl", "task": "t"}
    created = manifest("a.png", claim)
    [action] = created["assertions"][0]["data"]["actions"]
    assert action["action"] == "c2pa.created" and action["digitalSourceType"].endswith("/trainedAlgorithmicMedia")
    assert "ingredients" not in created and "seed" not in action["parameters"]
    picture = Ingredient("image", "ab" * 32, "image/png", "parentOf")
    edited = manifest("a.png", {**claim, "seed": 5}, [picture, Ingredient("mask", "cd" * 32, "image/png", "inputTo")])
    opened, change = edited["assertions"][0]["data"]["actions"]
    assert opened == {"action": "c2pa.opened", "parameters": {"ingredientIds": ["ingredient0"]}}
    assert change["action"] == "c2pa.edited" and change["parameters"]["seed"] == 5
    assert change["digitalSourceType"].endswith("/compositeWithTrainedAlgorithmicMedia")
    assert [item["instance_id"] for item in edited["ingredients"]] == ["sha256:" + "ab" * 32, "sha256:" + "cd" * 32]


def test_each_file_is_signed_and_a_signer_that_fails_never_lets_an_unmarked_file_out() -> None:
    marks = open_marks("c2pa", None, None)
    marking = marks.marking(marks.marks, "sdxl", "sdxl", "text2img", 1)
    png = media.encode_image(Image.new("RGB", (32, 32), (9, 9, 9)))
    found = credentials(marking.file(png, "png"), "png")
    assert found.state == "Valid" and found.generation["parameters"] == {
        "model": "sdxl",
        "family": "sdxl",
        "task": "text2img",
    }
    broken = open_marks("c2pa", None, None, tsa_url="http://127.0.0.1:9/unreachable")
    with pytest.raises(MarkingFailed, match="C2PA content credentials failed.*no unmarked file is sent"):
        broken.marking(broken.marks, "sdxl", "sdxl", "text2img", 1).file(png, "png")


def test_without_marks_nothing_changes() -> None:
    marks = open_marks("off", None, None)
    marking = marks.marking(marks.marks, "sdxl", "sdxl", "text2img", 1)
    picture = photo_like(256, 256)
    assert marks.signer is None and marking.pictures([picture])[0] is picture
    assert marking.file(b"file", "png") == b"file"
