"""img2img and inpainting through real server processes: data URLs, v2 tensors, URLs and their policy."""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient
from kserve.protocol.infer_type import InferInput, InferRequest

from tests.conftest import (
    IMAGE_SERVER_FETCH_TIMEOUT,
    IMAGE_SERVER_MAX_BYTES,
    IMAGE_SERVER_MAX_PIXELS,
    ServerProcess,
    free_port,
)
from tests.helpers import as_data_url, grpc_infer, only_image, open_image, predict
from tests.image_host import FILES, SLOW_SECONDS, ImageHost, gradient, mask, png

IMAGE = png(gradient(100, 70))  # served as 96x64: rounded down to a multiple of 8
MASK = png(mask(25, 18))  # another size than the image: resized to it
STEPS = {"num_inference_steps": 4}


def edit(**fields: object) -> dict:
    """A cheap image task instance."""
    return {"prompt": "a red fox", "seed": 3, **STEPS, **fields}


@pytest.fixture(scope="module")
def images(image_server: ServerProcess) -> Iterator[httpx.Client]:
    """An httpx client for the server with private image URLs allowed and a dedicated inpainting model."""
    with httpx.Client(base_url=image_server.url, timeout=120) as http:
        yield http


# --- img2img and inpaint with inline images (base server: no refiner, inpainting from the base) ---


def test_img2img_keeps_the_input_size_and_is_inferred(client: httpx.Client) -> None:
    prediction, image, _ = only_image(predict(client, edit(image=as_data_url(IMAGE))))
    assert prediction["task_type"] == "img2img" and prediction["seed"] == 3
    assert image.size == (96, 64) and image.format == "PNG"


def test_img2img_seeds_are_reproducible(client: httpx.Client) -> None:
    first = only_image(predict(client, edit(image=base64.b64encode(IMAGE).decode())))[2]
    again = only_image(predict(client, edit(image=as_data_url(IMAGE))))[2]
    other = only_image(predict(client, edit(image=as_data_url(IMAGE), seed=4)))[2]
    assert first == again and first != other


@pytest.mark.parametrize(
    ("sides", "size"),
    [({"width": 128, "height": 64}, (128, 64)), ({"width": 128}, (128, 88)), ({"height": 96}, (136, 96))],
)
def test_explicit_sides_resize_the_input(client: httpx.Client, sides: dict, size: tuple[int, int]) -> None:
    assert only_image(predict(client, edit(image=as_data_url(IMAGE), **sides)))[1].size == size


def test_inpaint_with_the_base_model_and_a_resized_mask(client: httpx.Client) -> None:
    request = edit(image=as_data_url(IMAGE), mask=as_data_url(MASK), num_images=2)
    answer = predict(client, request)
    assert answer.status_code == 200, answer.text
    (prediction,) = answer.json()["predictions"]
    assert prediction["task_type"] == "inpaint" and len(prediction["images"]) == 2
    sizes = {open_image(base64.b64decode(url.split(",", 1)[1])).size for url in prediction["images"]}
    assert sizes == {(96, 64)}


def test_every_instance_is_checked_before_any_runs(client: httpx.Client) -> None:
    good, bad = edit(image=as_data_url(IMAGE)), edit(image=as_data_url(b"not an image"))
    answer = predict(client, good, bad)
    assert answer.status_code == 400 and answer.json()["error"].startswith("image: ")


# --- v2: image and mask as BYTES tensors ---


def test_v2_json_takes_base64_tensors_and_parameters(client: httpx.Client) -> None:
    body = {
        "inputs": [
            {"name": "prompt", "shape": [1], "datatype": "BYTES", "data": ["a red fox"]},
            {"name": "image", "shape": [1], "datatype": "BYTES", "data": [base64.b64encode(IMAGE).decode()]},
        ],
        "parameters": {"mask": as_data_url(MASK), "seed": 5, **STEPS},
    }
    answer = client.post("/v2/models/sdxl/infer", json=body)
    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert result["parameters"]["task_type"] == "inpaint"
    images = next(o for o in result["outputs"] if o["name"] == "images")
    assert open_image(base64.b64decode(images["data"][0])).size == (96, 64)


def _tensor(name: str, value: bytes) -> httpclient.InferInput:
    tensor = httpclient.InferInput(name, [1], "BYTES")
    tensor.set_data_from_numpy(np.array([value], dtype=object), binary_data=True)
    return tensor


def test_v2_binary_tensors_carry_the_raw_files(base_server: ServerProcess) -> None:
    client = httpclient.InferenceServerClient(base_server.url.removeprefix("http://"))
    inputs = [_tensor("prompt", b"a red fox"), _tensor("image", IMAGE), _tensor("mask", MASK)]
    result = client.infer("sdxl", inputs, parameters={"width": 64, "height": 64, **STEPS})
    (image,) = result.as_numpy("images")
    assert open_image(image).size == (64, 64)  # tritonclient asks for binary outputs: the raw file


@pytest.mark.parametrize("binary", [True, False], ids=["raw_contents", "typed_contents"])
def test_grpc_takes_raw_image_bytes(base_server: ServerProcess, binary: bool) -> None:
    inputs = []
    for name, value in (("prompt", b"a red fox"), ("image", IMAGE)):
        if binary:  # raw_input_contents
            tensor = InferInput(name, [1], "BYTES")
            tensor.set_data_from_numpy(np.array([value], dtype=object), binary_data=True)
        else:  # bytes_contents
            tensor = InferInput(name, [1], "BYTES", data=[value])
        inputs.append(tensor)
    request = InferRequest(model_name="sdxl", infer_inputs=inputs, parameters=dict(STEPS))

    response = grpc_infer(base_server.grpc_target, request)
    assert response.parameters["task_type"].string_param == "img2img"
    images = next(o for o in response.outputs if o.name == "images").as_numpy()
    png = images[0] if binary else base64.b64decode(images[0])  # raw contents in: raw files out
    assert open_image(png).size == (96, 64)


def test_v2_metadata_lists_the_image_inputs(client: httpx.Client) -> None:
    inputs = {i["name"]: i["datatype"] for i in client.get("/v2/models/sdxl").json()["inputs"]}
    assert {name: inputs[name] for name in ("image", "mask", "image_url", "mask_url", "use_refiner")} == {
        "image": "BYTES",
        "mask": "BYTES",
        "image_url": "BYTES",
        "mask_url": "BYTES",
        "use_refiner": "BOOL",
    }


# --- 400s naming the field (base server: private URLs refused) ---

DATA_IMAGE = as_data_url(IMAGE)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"image_url": "file:///etc/passwd"}, "image_url: the file: scheme is refused"),
        ({"image_url": "/etc/passwd"}, "image_url: not a URL: local paths are never read"),
        ({"image": "/etc/passwd"}, "image: is not valid base64"),
        ({"image": "%%%not base64"}, "image: is not valid base64"),
        ({"image": as_data_url(b"plain text, no pixels")}, "image: the image is not a PNG, JPEG or WebP image"),
        ({"image": "data:text/html;base64,PGI+", "task_type": "img2img"}, "image: data URL media type must be"),
        ({"image": as_data_url(png(gradient(16, 16)))}, "image: is 16x16, too small"),
        ({"mask": DATA_IMAGE}, "mask: given without an image"),
        ({"task_type": "inpaint", "image": DATA_IMAGE}, "mask: task_type inpaint needs mask or mask_url"),
        ({"task_type": "img2img"}, "image: task_type img2img needs image or image_url"),
        (
            {"image": DATA_IMAGE, "image_url": DATA_IMAGE},
            "image: give one of image, image_url, images, not both image and image_url",
        ),
        ({"image": DATA_IMAGE, "strength": 1.5}, "strength: must be > 0 and <= 1, got 1.5"),
        ({"image": DATA_IMAGE, "strength": 0.1}, "num_inference_steps: img2img runs num_inference_steps x strength"),
        ({"image": DATA_IMAGE, "use_refiner": True}, "use_refiner: this server has no refiner"),
        ({"image": DATA_IMAGE, "high_noise_frac": 0.8}, "high_noise_frac: applies to text2img only"),
        ({"image": DATA_IMAGE, "width": 100}, "width: must be a multiple of 8 (e.g. 96 or 104), got 100"),
        ({"image_url": "http://169.254.169.254/latest/meta-data/"}, "image_url: refused: the address is 169.254.169"),
        ({"image_url": "http://10.0.0.7/x.png"}, "image_url: refused: the address is 10.0.0.7, a private address"),
        ({"image": 5}, "image: must be a string, got 5"),
    ],
)
def test_bad_image_input_is_a_400_naming_the_field(client: httpx.Client, fields: dict, message: str) -> None:
    answer = predict(client, edit(**fields))
    assert answer.status_code == 400, answer.text
    assert message in answer.json()["error"], answer.json()["error"]


def test_loopback_urls_are_refused_without_the_flag(client: httpx.Client, image_host: ImageHost) -> None:
    before = image_host.hits["/fox.png"]
    answer = predict(client, edit(image_url=f"{image_host.url}/fox.png"))
    assert answer.status_code == 400
    assert "image_url: refused: the address is 127.0.0.1, a loopback address" in answer.json()["error"]
    assert image_host.hits["/fox.png"] == before  # never contacted
    host = f"http://localhost:{image_host.server.server_port}/fox.png"
    assert "resolves to" in predict(client, edit(image_url=host)).json()["error"]


# --- URLs, with private addresses allowed (in-cluster object store setting) ---


@pytest.mark.parametrize(
    ("path", "size"),
    [("/fox.png", (96, 64)), ("/photo.jpg", (96, 64)), ("/pic.webp", (80, 72)), ("/redirect/3/fox.png", (96, 64))],
)
def test_image_urls_are_fetched(images: httpx.Client, image_host: ImageHost, path: str, size: tuple) -> None:
    """PNG, JPEG (EXIF rotation applied: it is stored 64x96) and WebP; three redirects are fine."""
    prediction, image, _ = only_image(predict(images, edit(image_url=f"{image_host.url}{path}")))
    assert prediction["task_type"] == "img2img" and image.size == size


def test_inpaint_urls_with_the_dedicated_model(
    images: httpx.Client, client: httpx.Client, image_host: ImageHost
) -> None:
    """The dedicated inpainting UNet answers differently from inpainting with the base's UNet."""
    urls = {"image_url": f"{image_host.url}/fox.png", "mask_url": f"{image_host.url}/mask.png"}
    prediction, image, dedicated = only_image(predict(images, edit(**urls)))
    assert prediction["task_type"] == "inpaint" and image.size == (96, 64)
    inline = {"image": as_data_url(FILES["/fox.png"][0]), "mask": as_data_url(FILES["/mask.png"][0])}
    assert only_image(predict(images, edit(**inline)))[2] == dedicated  # same pixels by URL or inline
    assert only_image(predict(client, edit(**inline)))[2] != dedicated  # the base server's own inpainting


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/redirect/4/fox.png", "more than 3 redirects"),
        ("/missing.png", "answered HTTP 404 Not Found"),
        ("/endless", f"larger than the limit of {IMAGE_SERVER_MAX_BYTES} bytes"),
        ("/announced-huge", f"is 1000000000 bytes, more than the limit of {IMAGE_SERVER_MAX_BYTES}"),
        ("/notes.txt", "the image is not a PNG, JPEG or WebP image"),
        ("/big.png", f"is 600x600 = 360000 pixels, more than the limit of {IMAGE_SERVER_MAX_PIXELS}"),
        ("/to-file", "the file: scheme is refused"),
        ("/to-metadata", "169.254.169.254, a cloud metadata address"),
        ("/slow", f"did not finish downloading within {IMAGE_SERVER_FETCH_TIMEOUT} s"),
        ("/drip", f"did not finish downloading within {IMAGE_SERVER_FETCH_TIMEOUT} s"),
    ],
)
def test_fetch_failures_say_which(images: httpx.Client, image_host: ImageHost, path: str, message: str) -> None:
    started = time.monotonic()
    answer = predict(images, edit(image_url=f"{image_host.url}{path}"))
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"].startswith("image_url: ") and message in answer.json()["error"]
    assert time.monotonic() - started < SLOW_SECONDS  # limits cut the download short


def test_unreachable_urls_and_mask_urls_are_named(images: httpx.Client, image_host: ImageHost) -> None:
    closed = f"http://127.0.0.1:{free_port()}/fox.png"
    error = predict(images, edit(image_url=closed)).json()["error"]
    assert error.startswith(f"image_url: could not connect to {closed}")
    error = predict(images, edit(image_url=f"{image_host.url}/fox.png", mask_url=f"{image_host.url}/nope")).json()
    assert error["error"].startswith("mask_url: ") and "HTTP 404" in error["error"]


def test_url_secrets_stay_out_of_answers_and_logs(
    images: httpx.Client, image_server: ServerProcess, image_host: ImageHost
) -> None:
    url = f"{image_host.url}/missing.png?X-Amz-Signature=TOPSECRET&token=TOPSECRET"
    error = predict(images, edit(image_url=url)).json()["error"]
    assert "missing.png" in error and "TOPSECRET" not in error
    assert "TOPSECRET" not in image_server.log()


def test_health_answers_while_a_download_hangs(
    images: httpx.Client, image_server: ServerProcess, image_host: ImageHost
) -> None:
    def slow_download() -> None:
        with httpx.Client(base_url=image_server.url, timeout=60) as other:
            predict(other, edit(image_url=f"{image_host.url}/slow"))

    slow = threading.Thread(target=slow_download)
    slow.start()
    time.sleep(0.5)  # the download is under way: the event loop waits on it
    latencies = []
    with httpx.Client(base_url=image_server.url, timeout=5) as probe:
        for _ in range(5):
            started = time.perf_counter()
            assert probe.get("/v2/health/ready").status_code == 200
            latencies.append(time.perf_counter() - started)
    # Every probe was answered while the download still hung: the event loop was free. The latency bound only
    # catches a probe stuck behind something else; it is far above a 2-core machine's scheduling noise.
    assert slow.is_alive(), "the download ended before the probes"
    slow.join()
    assert max(latencies) < 2.0, latencies
    assert only_image(predict(images, edit(image=as_data_url(IMAGE))))[1].size == (96, 64)  # still serving


# --- img2img with a refiner ---


def test_img2img_is_refined_by_the_refiner_unless_the_request_opts_out(refiner_server: ServerProcess) -> None:
    with httpx.Client(base_url=refiner_server.url, timeout=120) as http:
        refined = only_image(predict(http, edit(image=as_data_url(IMAGE), refiner_inference_steps=8)))
        plain = only_image(predict(http, edit(image=as_data_url(IMAGE), use_refiner=False)))
        text = only_image(predict(http, edit(width=64, height=64, use_refiner=False)))
        assert refined[0]["task_type"] == plain[0]["task_type"] == "img2img"
        assert refined[1].size == plain[1].size == (96, 64) and text[1].size == (64, 64)
        assert refined[2] != plain[2]
        answer = predict(http, edit(image=as_data_url(IMAGE), refiner_inference_steps=2))
        assert answer.status_code == 400
        assert answer.json()["error"].startswith("refiner_inference_steps: img2img runs refiner_inference_steps x")
