"""This year's image families against real server processes: each read from its folder (no --model_type), each
task over v1, v2 REST (binary), gRPC, jobs and the OpenAI SDK, LoRA, and the 400s a family gives."""

from __future__ import annotations

import base64
import hashlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import openai
import pytest
from kserve.protocol.infer_type import InferInput, InferRequest
from kserve_diffusion.testing import tiny

from tests.conftest import ServerProcess, start_server
from tests.docs_examples import examples, run
from tests.helpers import as_data_url, decode_data_url, grpc_infer, only_image, open_image, predict
from tests.image_host import gradient, mask, png
from tests.jobs_client import OWNER, submit, wait_for
from tests.provenance import assert_signed, credentials

STEPS = {"num_inference_steps": 2, "seed": 11}
PICTURE = png(gradient(100, 70))  # an edit's output follows it: 96x64 (multiples of 16)
OTHER = png(gradient(64, 80))
MASK = png(mask(100, 70))


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny folders (Z-Image named as Turbo's), and the Qwen-Image and FLUX.2 [klein] adapters."""
    root = tmp_path_factory.mktemp("families")
    loras = root / "loras"
    return {
        "qwen_image": tiny.write("qwen_image", root / "qwen-image", loras=loras),
        "qwen_image_edit_plus": tiny.write("qwen_image_edit_plus", root / "qwen-image-edit-2511"),
        "flux2_klein": tiny.write("flux2_klein", root / "flux2-klein-4b", loras=loras),
        "z_image": tiny.write("z_image", root / "z-image-turbo"),
        "flux_kontext": tiny.write("flux_kontext", root / "flux1-kontext-dev"),
        "loras": loras,
    }


def _serve(
    folders: dict[str, Path],
    name: str,
    tmp: pytest.TempPathFactory,
    *args: str,
    model_name: str = "",
    marks: bool = False,
) -> Iterator[ServerProcess]:
    log = tmp.mktemp("logs") / f"{name}.log"
    args = ("--model_id", str(folders[name]), *args)
    server = start_server(list(args), log, {"HF_HUB_OFFLINE": "1"}, model_name=model_name or name, marks=marks)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def qwen(folders: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Qwen-Image, with LoRA adapters."""
    yield from _serve(folders, "qwen_image", tmp_path_factory, "--lora_dir", str(folders["loras"]))


@pytest.fixture(scope="module")
def edit_plus(folders: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Qwen-Image-Edit-Plus (2511's folder layout), as "qwen-edit" (docs/models.md's example)."""
    yield from _serve(folders, "qwen_image_edit_plus", tmp_path_factory, model_name="qwen-edit")


@pytest.fixture(scope="module")
def klein(folders: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """FLUX.2 [klein], with LoRA adapters."""
    yield from _serve(folders, "flux2_klein", tmp_path_factory, "--lora_dir", str(folders["loras"]))


@pytest.fixture(scope="module")
def z_image(folders: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Z-Image-Turbo."""
    yield from _serve(folders, "z_image", tmp_path_factory)


@pytest.fixture(scope="module")
def kontext(folders: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """FLUX.1 Kontext, with the default marks (C2PA credentials and the watermark)."""
    yield from _serve(folders, "flux_kontext", tmp_path_factory, marks=True)


def v1(server: ServerProcess, **fields: object) -> httpx.Response:
    """One v1 predict of `fields` (cheap steps and a fixed seed unless given)."""
    with httpx.Client(base_url=server.url, timeout=180) as http:
        return predict(http, {"prompt": "a red fox", **STEPS, **fields}, model=server.model_name)


def image_of(response: httpx.Response) -> bytes:
    """The one PNG of a v1 answer."""
    assert response.status_code == 200, response.text
    return only_image(response)[2]


def error_of(response: httpx.Response) -> str:
    """The error text of a 400."""
    assert response.status_code == 400, response.text
    return response.json()["error"]


# --- read from the folder, text2img, same seed same bytes ---


@pytest.mark.parametrize(
    ("fixture", "family", "variant"),
    [
        ("qwen", "qwen_image", "Qwen-Image"),
        ("edit_plus", "qwen_image_edit", "Qwen-Image-Edit-Plus"),
        ("klein", "flux2", "FLUX.2 [klein]"),
        ("z_image", "z_image", "Z-Image-Turbo"),
        ("kontext", "flux_kontext", "FLUX.1 Kontext"),
    ],
)
def test_family_and_variant_come_from_the_folder(
    request: pytest.FixtureRequest, fixture: str, family: str, variant: str
) -> None:
    server: ServerProcess = request.getfixturevalue(fixture)
    assert f"serving --model_type {family}:" in server.log()
    assert f"serving {variant}" in server.log()


@pytest.mark.parametrize("fixture", ["qwen", "klein", "z_image"])
def test_text2img_repeats_with_the_seed(request: pytest.FixtureRequest, fixture: str) -> None:
    server: ServerProcess = request.getfixturevalue(fixture)
    first = v1(server, width=80, height=64)
    prediction, picture, data = only_image(first)
    assert prediction["task_type"] == "text2img" and picture.size == (80, 64)
    assert image_of(v1(server, width=80, height=64)) == data


def test_text2img_over_v2_rest_and_grpc_is_the_v1_image(qwen: ServerProcess) -> None:
    fields = {"width": 64, "height": 64, **STEPS}
    expected = image_of(v1(qwen, **fields))
    rest = httpx.post(
        f"{qwen.url}/v2/models/qwen_image/infer",
        json={
            "inputs": [{"name": "prompt", "datatype": "BYTES", "shape": [1], "data": ["a red fox"]}],
            "parameters": fields,
        },
        timeout=120,
    )
    assert rest.status_code == 200, rest.text
    assert base64.b64decode(rest.json()["outputs"][0]["data"][0]) == expected
    prompt = InferInput("prompt", [1], "BYTES")
    prompt.set_data_from_numpy(np.array([b"a red fox"], dtype=object), binary_data=True)
    response = grpc_infer(qwen.grpc_target, InferRequest("qwen_image", [prompt], parameters=fields))
    assert {output.name: output for output in response.outputs}["images"].as_numpy()[0] == expected


# --- edit with several pictures, over every protocol ---


def _pictures_tensor(binary: bool) -> InferInput:
    pictures = InferInput("images", [2], "BYTES")
    pictures.set_data_from_numpy(np.array([PICTURE, OTHER], dtype=object), binary_data=binary)
    return pictures


def test_edit_plus_two_pictures_over_v1_v2_grpc_and_jobs(edit_plus: ServerProcess) -> None:
    pictures = [as_data_url(PICTURE), as_data_url(OTHER)]
    answer = v1(edit_plus, prompt="put the cat from picture 2 on the sofa", images=pictures)
    prediction, picture, expected = only_image(answer)
    assert prediction["task_type"] == "edit"  # an edit model: pictures and a prompt mean edit
    assert picture.size == (96, 64)  # the first picture's size, rounded down to 16
    # gRPC: the files themselves in raw contents, one tensor of two elements
    prompt = InferInput("prompt", [1], "BYTES")
    prompt.set_data_from_numpy(np.array([b"put the cat from picture 2 on the sofa"], dtype=object), binary_data=True)
    request = InferRequest("qwen-edit", [prompt, _pictures_tensor(True)], parameters=dict(STEPS))
    response = grpc_infer(edit_plus.grpc_target, request)
    assert {output.name: output for output in response.outputs}["images"].as_numpy()[0] == expected
    # v2 REST: base64 text elements in JSON
    rest = httpx.post(
        f"{edit_plus.url}/v2/models/qwen-edit/infer",
        json={
            "inputs": [
                {
                    "name": "prompt",
                    "datatype": "BYTES",
                    "shape": [1],
                    "data": ["put the cat from picture 2 on the sofa"],
                },
                {
                    "name": "images",
                    "datatype": "BYTES",
                    "shape": [2],
                    "data": [base64.b64encode(PICTURE).decode(), base64.b64encode(OTHER).decode()],
                },
            ],
            "parameters": STEPS,
        },
        timeout=180,
    )
    assert rest.status_code == 200, rest.text
    assert base64.b64decode(rest.json()["outputs"][0]["data"][0]) == expected
    # a job
    with httpx.Client(base_url=edit_plus.url, timeout=180, headers=OWNER) as http:
        job = submit(
            http,
            {"prompt": "put the cat from picture 2 on the sofa", "images": pictures, **STEPS},
            model="qwen-edit",
        )
        done = wait_for(http, f"/v1/models/qwen-edit/jobs/{job['id']}", timeout=180)
        assert done["status"] == "succeeded", done
        assert decode_data_url(done["predictions"][0]["images"][0])[1] == expected


def test_edit_over_the_openai_sdk_with_two_files(edit_plus: ServerProcess, klein: ServerProcess) -> None:
    for server in (edit_plus, klein):
        with openai.OpenAI(base_url=f"{server.url}/openai/v1", api_key="unused", max_retries=0, timeout=180) as sdk:
            answer = sdk.images.edit(
                image=[("a.png", PICTURE, "image/png"), ("b.png", OTHER, "image/png")],
                prompt="put the cat from picture 2 on the sofa",
                size="80x64",
                extra_body=STEPS,
            )
        assert answer.size == "80x64"
        v1_image = image_of(
            v1(
                server,
                prompt="put the cat from picture 2 on the sofa",
                width=80,
                height=64,
                images=[as_data_url(PICTURE), as_data_url(OTHER)],
            )
        )
        assert base64.b64decode(answer.data[0].b64_json) == v1_image


def test_klein_edits_inpaints_and_sizes_follow_the_picture(klein: ServerProcess) -> None:
    edited = v1(klein, images=[as_data_url(PICTURE), as_data_url(OTHER)])
    assert only_image(edited)[0]["task_type"] == "edit" and only_image(edited)[1].size == (96, 64)
    one = v1(klein, image=as_data_url(PICTURE), width=128)  # a picture on an edit model: edit; height follows
    assert only_image(one)[0]["task_type"] == "edit" and only_image(one)[1].size == (128, 96)
    inpainted = v1(klein, image=as_data_url(PICTURE), mask=as_data_url(MASK))
    assert only_image(inpainted)[0]["task_type"] == "inpaint"


def test_z_image_img2img_and_inpaint(z_image: ServerProcess) -> None:
    changed = v1(z_image, image=as_data_url(PICTURE), strength=0.6)
    assert only_image(changed)[0]["task_type"] == "img2img" and only_image(changed)[1].size == (96, 64)
    inpainted = v1(z_image, image=as_data_url(PICTURE), mask=as_data_url(MASK))
    assert only_image(inpainted)[0]["task_type"] == "inpaint"


def test_qwen_image_img2img_and_inpaint(qwen: ServerProcess) -> None:
    assert only_image(v1(qwen, image=as_data_url(PICTURE)))[0]["task_type"] == "img2img"
    assert only_image(v1(qwen, image=as_data_url(PICTURE), mask=as_data_url(MASK)))[0]["task_type"] == "inpaint"


def test_kontext_edits_one_picture_and_inpaints(kontext: ServerProcess) -> None:
    edited = v1(kontext, prompt="make it night", image=as_data_url(PICTURE))
    assert only_image(edited)[0]["task_type"] == "edit" and only_image(edited)[1].size == (96, 64)
    assert only_image(v1(kontext, image=as_data_url(PICTURE), mask=as_data_url(MASK)))[0]["task_type"] == "inpaint"
    generations = httpx.post(f"{kontext.url}/openai/v1/images/generations", json={"prompt": "x"}, timeout=30)
    assert generations.status_code == 400
    assert "serves edit, inpaint; images/generations needs text2img" in generations.json()["error"]["message"]
    text = v1(kontext, width=64, height=64)  # Kontext edits: a prompt alone is not a task it serves
    assert "image: task_type edit needs image or image_url or images" in error_of(text)


def test_an_edit_is_signed_as_edited_media_from_its_picture(kontext: ServerProcess) -> None:
    output = image_of(v1(kontext, prompt="make it night", images=[as_data_url(PICTURE)]))
    assert_signed(output, "png", action="c2pa.edited", model="flux_kontext")
    found = credentials(output, "png")
    assert [(item["title"], item["relationship"], item["instance_id"]) for item in found.manifest["ingredients"]] == [
        ("images[0]", "parentOf", "sha256:" + hashlib.sha256(PICTURE).hexdigest())
    ]
    assert found.generation["parameters"] == {"model": "flux_kontext", "family": "flux_kontext", "task": "edit"}


# --- LoRA ---


@pytest.mark.parametrize(("fixture", "adapter"), [("qwen", "qwen_image-style"), ("klein", "flux2-style")])
def test_loras_change_the_image_and_leave_no_trace(request: pytest.FixtureRequest, fixture: str, adapter: str) -> None:
    server: ServerProcess = request.getfixturevalue(fixture)
    fields = {"width": 64, "height": 64}
    plain = image_of(v1(server, **fields))
    styled = image_of(v1(server, **fields, loras=[{"name": adapter, "scale": 1.0}]))
    assert styled != plain
    assert image_of(v1(server, **fields)) == plain  # the next request runs the base model alone
    other = "flux2-style" if fixture == "qwen" else "qwen_image-style"
    assert "is made for" in error_of(v1(server, **fields, loras=[{"name": other}]))


# --- what a family cannot do ---


def test_over_limit_pictures_and_ignored_fields_are_400s(
    edit_plus: ServerProcess, klein: ServerProcess, kontext: ServerProcess, qwen: ServerProcess
) -> None:
    four = [as_data_url(PICTURE)] * 4
    assert "edits from at most 3 picture(s), got 4" in error_of(v1(edit_plus, images=four))
    assert "edits from at most 1 picture(s), got 2" in error_of(v1(kontext, images=four[:2]))
    assert "images: must hold 1 to 10 pictures, got 11" in error_of(v1(klein, images=[four[0]] * 11))
    assert "negative_prompt: FLUX.2 [klein]'s pipeline reads no negative prompt" in error_of(
        v1(klein, width=64, height=64, negative_prompt="blurry")
    )
    assert "guidance_scale: FLUX.2 [klein] has no guidance input" in error_of(
        v1(klein, width=64, height=64, guidance_scale=3.5)
    )
    assert "guidance_scale: Qwen-Image has no guidance input and would ignore it (its guidance is true_cfg_scale)" in (
        error_of(v1(qwen, width=64, height=64, guidance_scale=3.5))
    )
    assert "strength: applies to img2img and inpaint only, not edit" in error_of(
        v1(edit_plus, images=four[:1], strength=0.5)
    )
    assert "prompt_2: applies to SDXL, FLUX and FLUX.1 Kontext only, not Qwen-Image" in error_of(
        v1(qwen, width=64, height=64, prompt_2="x")
    )
    # the v2 tensor of pictures: its shape is checked before anything is read
    rest = httpx.post(
        f"{klein.url}/v2/models/flux2_klein/infer",
        json={
            "inputs": [
                {"name": "prompt", "datatype": "BYTES", "shape": [1], "data": ["x"]},
                {"name": "images", "datatype": "BYTES", "shape": [3], "data": ["a", "b"]},
            ]
        },
        timeout=30,
    )
    assert rest.status_code == 400 and "images: shape [3] needs 3 element(s), got 2" in rest.json()["error"]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        request = InferRequest("qwen-edit", [_pictures_tensor(True)], parameters={"prompt": "x"})
        request.inputs[0].shape = [11]
        grpc_infer(edit_plus.grpc_target, request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_contradicting_model_type_stops_the_start(folders: dict[str, Path]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "kserve_diffusion", "--model_type", "flux", "--model_id", str(folders["qwen_image"])],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "--model_type flux contradicts --model_id" in result.stderr
    assert "names QwenImagePipeline, a qwen_image model" in result.stderr


def test_the_capabilities_of_an_edit_model_in_v2_metadata(edit_plus: ServerProcess) -> None:
    metadata = httpx.get(f"{edit_plus.url}/v2/models/qwen-edit", timeout=30).json()
    inputs = {item["name"]: item for item in metadata["inputs"]}
    assert inputs["images"] == {"name": "images", "datatype": "BYTES", "shape": [-1]}
    assert open_image(PICTURE).size == (100, 70)


def test_the_families_examples_run_as_written(edit_plus: ServerProcess, tmp_path: Path) -> None:
    """docs/models.md's calls to the tiny Qwen-Image-Edit-Plus served as "qwen-edit" (the docs' port 8092)."""
    blocks = examples("localhost:8092")
    assert blocks, "docs/models.md has an edit example"
    answers = "\n".join(run(example, edit_plus, tmp_path, "localhost:8092") for example in blocks)
    assert '"task_type": "edit"' in answers


def test_the_playground_edits_two_uploaded_pictures(edit_plus: ServerProcess, browser, tmp_path: Path) -> None:
    """The playground page against an edit model: the task is offered with the fields the family reads (its
    guidance is true_cfg_scale), two uploaded files go as `images`."""
    edit = httpx.get(f"{edit_plus.url}/v1/models/qwen-edit/capabilities", timeout=30).json()["tasks"]["edit"]
    assert "true_cfg_scale" in edit["fields"] and "guidance_scale" not in edit["fields"]
    assert edit["max_input_images"] > 1 and "width" not in edit["defaults"]
    first, second = tmp_path / "first.png", tmp_path / "second.png"
    first.write_bytes(PICTURE)
    second.write_bytes(OTHER)
    context = browser.new_context()
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda message: message.type == "error" and errors.append(message.text))
    page.goto(f"{edit_plus.url}/playground/")
    page.wait_for_selector("#task_type option", state="attached")
    assert page.get_by_label("Task").input_value() == "edit"  # the model's first task
    page.get_by_label("Prompt", exact=True).fill("put the second picture's colours on the first")
    page.locator("#image").set_input_files([first, second])
    page.wait_for_function("document.querySelector('#picture').naturalWidth === 100")
    assert "2 pictures" in page.locator("#picture-count").inner_text()
    assert page.locator("#guidance_scale").is_hidden() and page.locator("#true_cfg_scale").is_visible()
    page.locator("#num_inference_steps").fill("2")
    with page.expect_request(lambda r: r.method == "POST" and r.url.endswith("/jobs")) as sent:
        page.get_by_role("button", name="Generate").click()
    body = sent.value.post_data_json["instances"][0]
    assert body["task_type"] == "edit" and len(body["images"]) == 2 and "image" not in body
    page.wait_for_selector("#gallery figure img", timeout=120_000)
    shown = page.locator("#gallery figure img").get_attribute("src")
    assert open_image(decode_data_url(shown)[1]).size == (96, 64)  # follows the first picture
    context.close()
    assert not errors, errors
