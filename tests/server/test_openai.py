"""The OpenAI Images API: the official `openai` SDK against a real server, and the routes' error mapping in-process."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from PIL import Image

from tests.conftest import IMAGE_SERVER_MAX_BYTES, ServerProcess
from tests.helpers import as_data_url, decode_data_url, open_image, predict

STEPS = {"num_inference_steps": 2}


@pytest.fixture(scope="module")
def sdk(base_server: ServerProcess) -> Iterator[openai.OpenAI]:
    """The official client, pointed at the tiny server (no retries: each error is seen as it is)."""
    with openai.OpenAI(base_url=f"{base_server.url}/openai/v1", api_key="unused", max_retries=0) as client:
        yield client


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def decoded(b64: str | None) -> bytes:
    assert b64 is not None
    return base64.b64decode(b64)


def test_models_lists_the_served_model(sdk: openai.OpenAI) -> None:
    (card,) = sdk.models.list().data
    assert (card.id, card.object, card.owned_by) == ("sdxl", "model", "kserve-diffusion")
    assert sdk.models.retrieve("sdxl").id == "sdxl"
    with pytest.raises(openai.NotFoundError):
        sdk.models.retrieve("dall-e-3")


def test_generate_with_extra_body_matches_v1(sdk: openai.OpenAI, client: httpx.Client) -> None:
    answer = sdk.images.generate(
        model="sdxl", prompt="a red fox", n=2, size="64x64", extra_body={"seed": 5, "guidance_scale": 5.0, **STEPS}
    )
    assert (answer.output_format, answer.size, answer.model_extra["seed"]) == ("png", "64x64", 5)
    assert answer.created > 0 and len(answer.data) == 2
    files = [decoded(item.b64_json) for item in answer.data]
    assert [open_image(file).size for file in files] == [(64, 64), (64, 64)]
    v1 = predict(
        client,
        {"prompt": "a red fox", "height": 64, "width": 64, "num_images": 2, "seed": 5, "guidance_scale": 5.0, **STEPS},
    )
    v1_files = [decode_data_url(url)[1] for url in v1.json()["predictions"][0]["images"]]
    assert files == v1_files  # seed, guidance and steps reached the pipeline; the encoding is the same


def test_generate_without_model_and_size_uses_the_defaults(sdk: openai.OpenAI) -> None:
    answer = sdk.images.generate(prompt="a red fox", extra_body={"num_inference_steps": 1})
    assert answer.size == "1024x1024" and open_image(decoded(answer.data[0].b64_json)).size == (1024, 1024)


@pytest.mark.parametrize(("output_format", "magic"), [("jpeg", b"\xff\xd8\xff"), ("webp", b"RIFF")])
def test_output_format_and_compression(sdk: openai.OpenAI, output_format: str, magic: bytes) -> None:
    sizes = []
    for compression in (10, 95):
        answer = sdk.images.generate(
            prompt="a red fox",
            size="128x128",
            output_format=output_format,
            output_compression=compression,
            extra_body={"seed": 1, **STEPS},
        )
        data = decoded(answer.data[0].b64_json)
        assert answer.output_format == output_format and data.startswith(magic)
        assert open_image(data).format == output_format.upper()
        sizes.append(len(data))
    assert sizes[0] < sizes[1]  # output_compression is the quality: lower is smaller


@pytest.mark.parametrize(
    ("arguments", "error", "param", "words"),
    [
        ({"model": "dall-e-3"}, openai.NotFoundError, "model", "the model 'dall-e-3' is not served here"),
        ({"size": "65x64"}, openai.BadRequestError, "size", "size: width must be a multiple of 8"),
        ({"size": "big"}, openai.BadRequestError, "size", 'size: must be "WIDTHxHEIGHT"'),
        ({"n": 9}, openai.BadRequestError, "n", "n: must be between 1 and 4, got 9"),
        ({"response_format": "url"}, openai.BadRequestError, "response_format", "needs --output_store"),
        ({"quality": "hd"}, openai.BadRequestError, "quality", "quality: must be one of 'auto' or 'standard'"),
        ({"style": "vivid"}, openai.BadRequestError, "style", "style: an OpenAI parameter this server does not"),
        ({"output_compression": 50}, openai.BadRequestError, "output_compression", "applies to jpeg and webp"),
        ({"extra_body": {"num_images": 2}}, openai.BadRequestError, "num_images", "num_images: not accepted here"),
        ({"extra_body": {"sampler": "DDIM"}}, openai.BadRequestError, "sampler", "sampler: unknown field"),
        ({"extra_body": {"num_inference_steps": 0}}, openai.BadRequestError, "num_inference_steps", "must be >= 1"),
        (
            {"extra_body": {"num_frames": 5}},
            openai.BadRequestError,
            "num_frames",
            "applies to text2video and img2video only",
        ),
    ],
)
def test_errors_have_openai_shape(
    sdk: openai.OpenAI, arguments: dict[str, Any], error: type[openai.APIStatusError], param: str, words: str
) -> None:
    with pytest.raises(error) as caught:
        sdk.images.generate(prompt="a red fox", **{"size": "64x64", **arguments})
    assert caught.value.param == param
    assert caught.value.type == "invalid_request_error"
    assert caught.value.code in ("invalid_value", "model_not_found")
    assert words in caught.value.message, caught.value.message


def test_malformed_bodies_are_400_in_openai_shape(base_server: ServerProcess) -> None:
    url = f"{base_server.url}/openai/v1/images/generations"
    for content, headers in [(b'{"prompt": ', {"Content-Type": "application/json"}), (b"prompt=x", {})]:
        answer = httpx.post(url, content=content, headers=headers, timeout=30)
        assert answer.status_code == 400, answer.text
        assert set(answer.json()["error"]) == {"message", "type", "param", "code"}
        assert answer.json()["error"]["message"].startswith("body: ")
    answer = httpx.post(url, json={"size": "64x64"}, timeout=30)
    assert answer.status_code == 400 and answer.json()["error"]["param"] == "prompt"


def test_edit_without_mask_is_img2img(sdk: openai.OpenAI, client: httpx.Client) -> None:
    source = png(Image.new("RGB", (96, 64), (200, 40, 40)))
    answer = sdk.images.edit(
        image=("fox.png", source, "image/png"),
        prompt="a red fox",
        extra_body={"strength": 0.5, "seed": 4, **STEPS},  # sent as multipart text, read as numbers
    )
    assert answer.size == "96x64"  # follows the input image
    v1 = predict(client, {"prompt": "a red fox", "image": as_data_url(source), "strength": 0.5, "seed": 4, **STEPS})
    assert v1.json()["predictions"][0]["task_type"] == "img2img"
    assert decoded(answer.data[0].b64_json) == decode_data_url(v1.json()["predictions"][0]["images"][0])[1]


def test_edit_mask_transparency_is_openai_convention(sdk: openai.OpenAI, client: httpx.Client) -> None:
    source = png(Image.new("RGB", (64, 64), (30, 90, 200)))
    openai_mask = Image.new("RGBA", (64, 64), (0, 0, 0, 255))
    openai_mask.paste((0, 0, 0, 0), (0, 0, 32, 64))  # left half transparent: repaint it
    ours = Image.new("L", (64, 64), 0)
    ours.paste(255, (0, 0, 32, 64))  # the same as white on black
    request = {"prompt": "a red fox", "seed": 6, **STEPS}
    expected = predict(client, {**request, "image": as_data_url(source), "mask": as_data_url(png(ours))}).json()
    assert expected["predictions"][0]["task_type"] == "inpaint"
    want = decode_data_url(expected["predictions"][0]["images"][0])[1]
    with_alpha_mask = sdk.images.edit(
        image=("in.png", source, "image/png"),
        mask=("mask.png", png(openai_mask), "image/png"),
        prompt="a red fox",
        extra_body={"seed": 6, **STEPS},
    )
    with_white_mask = sdk.images.edit(
        image=("in.png", source, "image/png"),
        mask=("mask.png", png(ours), "image/png"),
        prompt="a red fox",
        extra_body={"seed": 6, **STEPS},
    )
    transparent_source = Image.open(io.BytesIO(source)).convert("RGBA")
    transparent_source.putalpha(openai_mask.getchannel("A"))
    own_alpha = sdk.images.edit(
        image=("in.png", png(transparent_source), "image/png"), prompt="a red fox", extra_body={"seed": 6, **STEPS}
    )
    assert decoded(with_alpha_mask.data[0].b64_json) == want
    assert decoded(with_white_mask.data[0].b64_json) == want
    assert own_alpha.size == "64x64" and open_image(decoded(own_alpha.data[0].b64_json)).size == (64, 64)


def test_edit_errors(sdk: openai.OpenAI) -> None:
    source = png(Image.new("RGB", (64, 64)))
    cases = [
        ({"extra_body": {"seed": "many"}}, "seed", "seed: must be a number"),
        ({"extra_body": {"image_url": "https://example.com/a.png"}}, "image_url", "not accepted here"),
        ({"response_format": "url"}, "response_format", "needs --output_store"),
        ({"n": 0}, "n", "n: must be >= 1"),
    ]
    for arguments, param, words in cases:
        with pytest.raises(openai.BadRequestError) as caught:
            sdk.images.edit(image=("a.png", source, "image/png"), prompt="x", **arguments)
        assert caught.value.param == param and words in caught.value.message, caught.value.message
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.images.edit(image=("a.txt", b"not an image", "text/plain"), prompt="x")
    assert caught.value.param == "image" and "the file is not a PNG, JPEG or WebP image" in caught.value.message


def test_edit_file_size_limit(image_server: ServerProcess) -> None:
    with (
        openai.OpenAI(base_url=f"{image_server.url}/openai/v1", api_key="-", max_retries=0) as sdk,
        pytest.raises(openai.BadRequestError) as caught,
    ):
        sdk.images.edit(image=("big.png", b"\x89PNG" + bytes(IMAGE_SERVER_MAX_BYTES), "image/png"), prompt="x")
    assert caught.value.param == "image"
    assert f"more than the limit of {IMAGE_SERVER_MAX_BYTES} bytes" in caught.value.message


def test_openapi_describes_the_openai_routes(image_server: ServerProcess) -> None:
    spec = httpx.get(f"{image_server.url}/openapi.json", timeout=30).json()
    generations = spec["paths"]["/openai/v1/images/generations"]["post"]
    body = generations["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/ImageGenerationRequest"}
    assert generations["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ImagesResponse"
    }
    assert generations["responses"]["429"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorResponse"
    }
    schemas = spec["components"]["schemas"]
    assert {"prompt", "n", "size", "output_format", "output_compression"} <= set(
        schemas["ImageGenerationRequest"]["properties"]
    )
    edits = spec["paths"]["/openai/v1/images/edits"]["post"]["requestBody"]["content"]
    assert "multipart/form-data" in edits
    assert "/openai/v1/models" in spec["paths"]
    assert httpx.get(f"{image_server.url}/docs", timeout=30).status_code == 200


# --- the routes in-process, with a stand-in model: readiness and the serving errors' status codes ---
