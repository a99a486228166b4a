"""Input images in-process: decoding, sizing, task inference and the URL policy (no model needed)."""

from __future__ import annotations

import asyncio
import base64
import io
import struct
from dataclasses import replace

import orjson
import pytest
from kserve_diffusion import media
from kserve_diffusion.api.request import DEFAULT_LIMITS, Limits, parse_request
from kserve_diffusion.api.request import TASK_TYPES as ALL_TASKS
from kserve_diffusion.api.rules import output_size, resolve_task
from kserve_diffusion.config import defaults
from kserve_diffusion.errors import RequestError
from kserve_diffusion.media import fetch as fetch_module
from kserve_diffusion.media.fetch import FetchError, FetchPolicy, address_problem, fetch, safe_url_text
from kserve_diffusion.server.v2_binary import rewrite_body
from PIL import Image

from tests.image_host import FILES, ImageHost, gradient, png, sideways_jpeg, webp

PNG = png(gradient(100, 70))
B64 = base64.b64encode(PNG).decode()


POLICY = FetchPolicy(allow_private=False, max_bytes=defaults().max_image_bytes, timeout=5)


def test_base64_may_be_wrapped_and_data_urls_may_be_percent_encoded() -> None:
    wrapped = "\n".join(B64[i : i + 76] for i in range(0, len(B64), 76))  # what `base64` prints
    assert media.decode_inline(wrapped, 10**6) == PNG
    assert media.decode_inline(f"data:image/png;base64,{B64}", 10**6) == PNG
    assert media.decode_data_url("data:image/png,%89PNG", 100) == b"\x89PNG"
    assert media.decode_inline(PNG, 10**6) == PNG  # v2 raw file bytes
    assert media.decode_inline(B64.encode(), 10**6) == PNG  # v2 base64 bytes


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("not base64!", "is not valid base64"),
        ("/etc/passwd", "is not valid base64"),  # never a path
        ("data:text/plain;base64,aGk=", "media type must be image/png, image/jpeg or image/webp"),
        ("data:image/png;base64", "is not a valid data URL"),
        (b"\xff\xfe\x00binary junk", "neither a PNG, JPEG or WebP file nor base64"),
        ("A" * 2000, "holds more than the limit of 1000 bytes"),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 2000, "more than the limit of 1000"),
    ],
)
def test_bad_inline_values_say_why(value: str | bytes, problem: str) -> None:
    with pytest.raises(media.MediaError, match=problem):
        media.decode_inline(value, 1000)


def test_images_are_decoded_upright_and_converted() -> None:
    photo = media.open_image(sideways_jpeg(), "RGB", 10**6)
    assert photo.size == (96, 64) and photo.mode == "RGB"  # EXIF orientation applied
    assert media.open_image(webp(), "RGB", 10**6).size == (80, 72)
    rgba = io.BytesIO()
    Image.new("RGBA", (8, 8), (255, 0, 0, 128)).save(rgba, "PNG")
    assert media.open_image(rgba.getvalue(), "RGB", 10**6).mode == "RGB"
    assert media.open_image(PNG, "L", 10**6).mode == "L"


def test_decoding_refuses_other_formats_bombs_and_truncation() -> None:
    gif = io.BytesIO()
    Image.new("RGB", (8, 8)).save(gif, "GIF")
    with pytest.raises(media.MediaError, match="is not a PNG, JPEG or WebP image"):
        media.open_image(gif.getvalue(), "RGB", 10**6)
    with pytest.raises(media.MediaError, match="is 100x70 = 7000 pixels, more than the limit of 6999"):
        media.open_image(PNG, "RGB", 6999)
    with pytest.raises(media.MediaError, match="could not be decoded as PNG"):
        media.open_image(PNG[: len(PNG) // 2], "RGB", 10**6)


def _request(**fields: object):
    return parse_request({"prompt": "x", **fields}, DEFAULT_LIMITS)


@pytest.mark.parametrize(
    ("fields", "size", "limits"),
    [
        ({}, (1000, 700), DEFAULT_LIMITS),  # own size, rounded down to a multiple of 8
        ({}, (1000, 700), replace(DEFAULT_LIMITS, max_side=512)),  # scaled to the largest side
        ({}, (1000, 700), replace(DEFAULT_LIMITS, max_pixels=256 * 256)),  # scaled to the pixel limit
        ({"width": 512, "height": 256}, (1000, 700), DEFAULT_LIMITS),  # explicit sides win
        ({"width": 512}, (1000, 700), DEFAULT_LIMITS),  # one side: the other keeps the aspect ratio
        ({"height": 128}, (1000, 700), DEFAULT_LIMITS),
    ],
)
def test_output_size(fields: dict, size: tuple[int, int], limits: Limits) -> None:
    expected = {
        (): {
            DEFAULT_LIMITS: (1000, 696),
            replace(DEFAULT_LIMITS, max_side=512): (512, 352),
            replace(DEFAULT_LIMITS, max_pixels=256 * 256): (304, 208),
        },
        ("width", "height"): (512, 256),
        ("width",): (512, 360),
        ("height",): (184, 128),
    }[tuple(fields)]
    if isinstance(expected, dict):
        expected = expected[limits]
    width, height = output_size(size, _request(**fields), limits, 8)
    assert (width, height) == expected
    assert width * height <= limits.max_pixels and max(width, height) <= limits.max_side


def test_output_size_errors_name_the_side() -> None:
    with pytest.raises(RequestError, match="image: is 40x30, too small .* give width and height"):
        output_size((40, 30), _request(), DEFAULT_LIMITS, 8)
    with pytest.raises(RequestError, match="height: follows the input image's 100x1000 aspect ratio, so must be"):
        output_size((100, 1000), _request(width=1024), DEFAULT_LIMITS, 8)


@pytest.mark.parametrize(
    ("fields", "task"),
    [
        ({}, "text2img"),
        ({"image": B64}, "img2img"),
        ({"image_url": "https://example.com/a.png"}, "img2img"),
        ({"image": B64, "mask": B64}, "inpaint"),
        ({"image_url": "https://example.com/a.png", "mask_url": "https://example.com/m.png"}, "inpaint"),
        ({"task_type": "text2img", "image": B64}, "text2img"),  # explicit wins; the image is not read
        ({"task_type": "img2img", "image": B64, "mask": B64}, "img2img"),
    ],
)
def test_task_inference(fields: dict, task: str) -> None:
    assert resolve_task(_request(**fields), "text2img", ALL_TASKS).task_type == task


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"mask": B64}, "mask: given without an image"),
        ({"mask_url": "https://example.com/m.png"}, "mask_url: given without an image"),
        ({"task_type": "inpaint", "image": B64}, "mask: task_type inpaint needs mask or mask_url"),
        ({"task_type": "img2img"}, "image: task_type img2img needs image or image_url"),
        (
            {"image": B64, "image_url": "https://example.com/a.png"},
            "image: give one of image, image_url, images, not both image and image_url",
        ),
    ],
)
def test_task_inference_errors(fields: dict, message: str) -> None:
    with pytest.raises(RequestError, match=message):
        resolve_task(_request(**fields), "text2img", ALL_TASKS)


@pytest.mark.parametrize(
    ("address", "problem"),
    [
        ("10.1.2.3", "a private address"),
        ("172.16.0.1", "a private address"),
        ("192.168.1.1", "a private address"),
        ("127.0.0.1", "a loopback address"),
        ("::1", "a loopback address"),
        ("169.254.10.10", "a link-local address"),
        ("fe80::1", "a link-local address"),
        ("169.254.169.254", "a cloud metadata address"),
        ("fd00:ec2::254", "a cloud metadata address"),
        ("100.100.100.200", "a cloud metadata address"),
        ("100.64.0.1", "not a public address"),  # carrier-grade NAT
        ("0.0.0.0", "an unspecified address"),
        ("::ffff:10.0.0.1", "10.0.0.1, a private address"),  # IPv4-mapped IPv6
        ("8.8.8.8", None),
        ("2001:4860:4860::8888", None),
    ],
)
def test_address_policy(address: str, problem: str | None) -> None:
    found = address_problem(address, allow_private=False)
    assert (found is None) if problem is None else (problem in found)


def test_allowing_private_addresses_still_refuses_metadata() -> None:
    assert address_problem("10.0.0.1", allow_private=True) is None
    assert address_problem("127.0.0.1", allow_private=True) is None
    assert "metadata" in address_problem("169.254.169.254", allow_private=True)


def test_urls_in_messages_lose_credentials_and_query() -> None:
    shown = safe_url_text("https://user:pw@bucket.example.com:8443/a/b.png?X-Amz-Signature=SECRET#f")
    assert shown == "https://bucket.example.com:8443/a/b.png"


def test_every_redirect_hop_is_checked(image_host: ImageHost, monkeypatch: pytest.MonkeyPatch) -> None:
    """With 127.0.0.1 (only) treated as public, a redirect to another loopback address is refused."""
    real = fetch_module.address_problem
    monkeypatch.setattr(fetch_module, "address_problem", lambda a, p: None if a == "127.0.0.1" else real(a, p))
    policy = POLICY
    assert asyncio.run(fetch(f"{image_host.url}/fox.png", policy)) == FILES["/fox.png"][0]
    before = image_host.hits["/fox.png"]
    with pytest.raises(FetchError, match=r"refused: the address is 127\.0\.0\.2, a loopback address"):
        asyncio.run(fetch(f"{image_host.url}/redirect/2/to-other-loopback", policy))
    with pytest.raises(FetchError, match=r"refused: the address is ::1, a loopback address"):
        asyncio.run(fetch(f"{image_host.url}/to-ipv6-loopback", policy))
    assert image_host.hits["/fox.png"] == before  # neither refused hop reached the file


def test_names_are_checked_by_what_they_resolve_to(image_host: ImageHost) -> None:
    port = image_host.server.server_port
    with pytest.raises(FetchError, match="refused: localhost resolves to .*a loopback address"):
        asyncio.run(
            fetch(
                f"http://localhost:{port}/fox.png",
                POLICY,
            )
        )


def _bytes_tensor(*elements: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


def test_binary_image_tensors_are_rewritten_as_base64_and_nothing_else() -> None:
    prompt, image = _bytes_tensor(b"a fox"), _bytes_tensor(PNG)
    header = orjson.dumps(
        {
            "inputs": [
                {"name": "prompt", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": len(prompt)}},
                {"name": "seed", "datatype": "INT64", "shape": [1], "data": [1]},
                {"name": "image", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": len(image)}},
            ]
        }
    )
    body, length = rewrite_body(header + prompt + image, str(len(header)), {"image", "mask"})
    inputs = orjson.loads(body[:length])["inputs"]
    assert body[length : length + len(prompt)] == prompt
    assert body[length + len(prompt) :] == _bytes_tensor(B64.encode())
    assert inputs[2]["parameters"]["binary_data_size"] == len(body) - length - len(prompt)
    assert inputs[1] == {"name": "seed", "datatype": "INT64", "shape": [1], "data": [1]}
    untouched, untouched_length = rewrite_body(header + prompt + image, str(len(header)), {"mask"})
    assert untouched[untouched_length:] == prompt + image  # only the named tensors are re-encoded
