"""LoRA adapters per request (--lora_dir) against real servers: every family with one and two adapters, both
file layouts, no leakage between requests, every protocol, the 400s, the cache, and --compile hot-swapping."""

from __future__ import annotations

import base64
import json
import re
import shutil
from collections.abc import Iterator

import httpx
import numpy as np
import openai
import pytest
import torch
from kserve.protocol.infer_type import InferInput, InferRequest
from kserve_diffusion.testing import tiny
from kserve_diffusion.testing.adapters import save_diffusers
from PIL import Image

from tests.conftest import ServerProcess
from tests.helpers import decode_data_url, grpc_infer, only_image, predict, small
from tests.image_host import png as png_file

VIDEO = {"task_type": "text2video", "video_height": 64, "video_width": 64, "num_frames": 5, "num_inference_steps": 2}


@pytest.fixture(scope="module")
def lora_server(video_server: ServerProcess) -> ServerProcess:
    """The demo's server (SDXL with Wan beside it) with every adapter of the session's `lora_dir`."""
    return video_server


@pytest.fixture(scope="module")
def http(lora_server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=lora_server.url, timeout=120) as client:
        yield client


def png(http: httpx.Client, **fields: object) -> bytes:
    return only_image(predict(http, small(seed=7, **fields)))[2]


def video(http: httpx.Client, **fields: object) -> bytes:
    response = predict(http, {"prompt": "a red fox", "seed": 7, **VIDEO, **fields})
    assert response.status_code == 200, response.text
    return decode_data_url(response.json()["predictions"][0]["video"])[1]


def loras(*pairs: tuple[str, float]) -> list[dict]:
    return [{"name": name, "scale": scale} for name, scale in pairs]


def metric(http: httpx.Client, name: str) -> float:
    text = http.get("/metrics").text
    match = re.search(rf"^kserve_diffusion_{name}(?:_total)? (\S+)$", text, re.MULTILINE)
    assert match, name
    return float(match.group(1))


def test_no_adapter_scale_zero_and_after_adapters_equal_a_server_without_any(http, client) -> None:
    """client: the session's plain SDXL server, which never had --lora_dir."""
    plain = png(client)
    assert png(http) == plain
    styled = png(http, loras=loras(("sdxl-style", 1.0)))
    assert styled != plain
    assert png(http, loras=loras(("sdxl-style", 0.0))) == plain
    assert png(http, loras=loras(("sdxl-detail", 1.0), ("sdxl-kohya", 0.5))) not in (plain, styled)
    assert png(http) == plain  # nothing left behind
    assert png(http, loras=loras(("sdxl-style", 1.0))) == styled  # and the adapter is the same again


def test_each_layout_and_the_scale_change_the_image(http) -> None:
    plain = png(http)
    kohya = png(http, loras=loras(("sdxl-kohya", 1.0)))
    folder = png(http, loras=loras(("sdxl-detail", 1.0)))
    half = png(http, loras=loras(("sdxl-detail", 0.5)))
    assert len({plain, kohya, folder, half}) == 4
    two = png(http, loras=loras(("sdxl-detail", 1.0), ("sdxl-kohya", 1.0)))
    assert two not in (kohya, folder)
    assert png(http, loras=loras(("sdxl-detail", 1.0), ("sdxl-kohya", 1.0))) == two  # the same request, the same bytes


def test_wan_video_with_one_and_two_adapters(http) -> None:
    plain = video(http)  # no Wan adapter has been loaded on this server before
    one = video(http, loras=loras(("wan-style", 1.0)))
    two = video(http, loras=loras(("wan-style", 1.0), ("wan-kohya", 0.7)))
    assert len({plain, one, two}) == 3
    assert video(http, loras=loras(("wan-kohya", 0.0))) == plain
    assert video(http) == plain


@pytest.mark.parametrize(
    ("value", "words"),
    [
        (loras(("nope", 1.0)), 'no adapter named "nope" (available: flux-detail'),
        ([{"name": "../sdxl-style"}], "[0].name must be an adapter name"),
        ([{"name": "sub/sdxl-style"}], "[0].name must be an adapter name"),
        (loras(("escape", 1.0)), "leads outside --lora_dir"),
        (loras(("flux-style", 1.0)), "'flux-style' is made for FLUX, this model is SDXL"),
        (loras(("sd15-style", 1.0)), "made for Stable Diffusion 1.x"),
        (loras(("other-architecture", 1.0)), "'other-architecture' cannot be loaded into this SDXL model"),
        (loras(("not-a-lora", 1.0)), "holds no LoRA matrices"),
        (loras(*[(f"sdxl-{n}", 1.0) for n in ("style", "detail", "kohya", "x", "y")]), "at most 4 adapters"),
        (loras(("sdxl-style", 4.5)), "[0].scale must be a number between -4 and 4, got 4.5"),
        ([{"name": "sdxl-style", "scale": "1"}], "[0].scale must be a number"),
        ([{"name": "sdxl-style", "weight": 1}], 'unknown key "weight"'),
        ([{"name": "sdxl-style"}, {"name": "sdxl-style"}], "'sdxl-style' twice"),
        ("not json", "must be a JSON list"),
        ('[{"name": "sdxl-style", "scale": NaN}]', "[0].scale must be a number between -4 and 4, got NaN"),
        ("[" * 100_000, "must be a JSON list"),
        ({"name": "sdxl-style"}, "must be a list"),
    ],
)
def test_bad_adapters_are_400s_naming_loras(http, value: object, words: str) -> None:
    response = predict(http, small(seed=7, loras=value))
    assert response.status_code == 400, response.text
    assert response.json()["error"].startswith("loras: ") and words in response.json()["error"], response.text


def test_a_failed_load_leaves_the_server_clean(http, client) -> None:
    before = png(http, loras=loras(("sdxl-style", 1.0)))
    assert predict(http, small(loras=loras(("other-architecture", 1.0)))).status_code == 400
    assert png(http) == png(client)
    assert png(http, loras=loras(("sdxl-style", 1.0))) == before


def test_adapters_on_the_wan_model_follow_its_family(http) -> None:
    response = predict(http, {"prompt": "a fox", **VIDEO, "loras": loras(("sdxl-style", 1.0))})
    assert response.status_code == 400 and "this model is Wan" in response.text


def test_listing(http) -> None:
    listing = http.get("/v1/models/sdxl/loras").json()
    entries = {entry["name"]: entry for entry in listing["loras"]}
    assert entries["sdxl-style"] == {"name": "sdxl-style", "family": "sdxl", "rank": 4, "format": "diffusers"}
    assert entries["sdxl-detail"]["rank"] == 8 and entries["flux-kohya"]["format"] == "kohya"
    assert entries["wan-kohya"]["family"] == "wan" and "escape" not in entries and "notes" not in entries
    assert "no LoRA matrices" in entries["not-a-lora"]["error"]
    assert listing["max_loras_per_request"] == 4
    assert http.get("/v1/models/other/loras").status_code == 404


def test_cache_metrics_and_log_line(http, lora_server) -> None:
    """Loads and hits are counted (the least-recently-used order is tested in-process, tests/model)."""
    png(http, loras=loras(("sdxl-kohya", 0.3)))
    loads, hits = metric(http, "lora_loads"), metric(http, "lora_cache_hits")
    png(http, loras=loras(("sdxl-kohya", 1.0)))
    assert metric(http, "lora_cache_hits") == hits + 1 and metric(http, "lora_loads") == loads
    assert re.search(r"request=\S+ loras=sdxl-kohya:0\.3 task=text2img", lora_server.log())


def test_v2_rest_grpc_and_openai_carry_loras(http, lora_server) -> None:
    chosen = loras(("sdxl-style", 0.8), ("sdxl-kohya", 0.5))
    expected = png(http, loras=chosen)
    text = json.dumps(chosen)
    # v2 REST: a request parameter holding the JSON list, and a BYTES input tensor
    body = {
        "inputs": [{"name": "prompt", "shape": [1], "datatype": "BYTES", "data": ["a red fox"]}],
        "parameters": {"height": 64, "width": 64, "num_inference_steps": 2, "seed": 7, "loras": text},
    }
    answer = http.post("/v2/models/sdxl/infer", json=body)
    assert answer.status_code == 200, answer.text
    assert base64.b64decode(answer.json()["outputs"][0]["data"][0]) == expected
    body["inputs"].append({"name": "loras", "shape": [1], "datatype": "BYTES", "data": [text]})
    del body["parameters"]["loras"]
    answer = http.post("/v2/models/sdxl/infer", json=body)
    assert base64.b64decode(answer.json()["outputs"][0]["data"][0]) == expected
    # gRPC, with KServe's client
    prompt = InferInput("prompt", [1], "BYTES")
    prompt.set_data_from_numpy(np.array([b"a red fox"], dtype=object), binary_data=True)
    parameters = {"height": 64, "width": 64, "num_inference_steps": 2, "seed": 7, "loras": text}
    response = grpc_infer(lora_server.grpc_target, InferRequest("sdxl", [prompt], parameters=parameters))
    assert response.outputs[0].as_numpy()[0] == expected
    bad = {**parameters, "loras": json.dumps(loras(("nope", 1.0)))}
    with pytest.raises(Exception, match="no adapter named"):
        grpc_infer(lora_server.grpc_target, InferRequest("sdxl", [prompt], parameters=bad))
    # OpenAI Images: an extra body field
    with openai.OpenAI(base_url=f"{lora_server.url}/openai/v1", api_key="unused", max_retries=0) as sdk:
        result = sdk.images.generate(
            prompt="a red fox", size="64x64", extra_body={"seed": 7, "num_inference_steps": 2, "loras": chosen}
        )
        assert base64.b64decode(result.data[0].b64_json) == expected
        with pytest.raises(openai.BadRequestError, match="no adapter named"):
            sdk.images.generate(prompt="x", size="64x64", extra_body={"loras": loras(("nope", 1.0))})


def test_a_server_without_lora_dir_says_how_to_get_one(client) -> None:
    response = predict(client, small(loras=loras(("sdxl-style", 1.0))))
    assert response.status_code == 400 and "start it with --lora_dir" in response.text


def test_flux_with_one_and_two_adapters(flux_server: ServerProcess) -> None:
    with httpx.Client(base_url=flux_server.url, timeout=120) as flux:

        def image(**fields: object) -> bytes:
            return only_image(predict(flux, small(seed=3, **fields), model="flux"))[2]

        plain = image()
        one = image(loras=loras(("flux-style", 1.0)))
        two = image(loras=loras(("flux-detail", 1.0), ("flux-kohya", 1.0)))
        assert len({plain, one, two}) == 3
        assert image(loras=loras(("flux-style", 0.0))) == plain
        assert image() == plain
        wrong = predict(flux, small(loras=loras(("wan-style", 1.0))), model="flux")
        assert wrong.status_code == 400 and "made for Wan, this model is FLUX" in wrong.text


def test_compile_switches_adapters_without_recompiling(compiled_server, compile_loras, lora_dir) -> None:
    """--compile regional: after the first request of this size (which compiles for it), switching adapters,
    scales and no adapter at all adds no compiled graph, and no adapter still gives the same bytes."""
    server, sdxl_only = compiled_server, compile_loras
    with httpx.Client(base_url=server.url, timeout=300) as http:
        plain = png(http)
        graphs = metric(http, "compiled_graphs")
        assert graphs >= 1
        images = [
            png(http, loras=loras(("sdxl-style", 1.0))),
            png(http, loras=loras(("sdxl-detail", 1.0), ("sdxl-kohya", 0.5))),
            png(http),
            png(http, loras=loras(("sdxl-kohya", 1.0))),
            png(http, loras=loras(("sdxl-style", 0.3), ("sdxl-detail", 1.0), ("sdxl-kohya", 1.0))),
            png(http, loras=loras(("sdxl-style", 1.0))),
            png(http, loras=loras(("sdxl-style", 0.0))),
        ]
        assert images[2] == plain and images[6] == plain and images[5] == images[0]
        assert len({images[0], images[1], images[3], images[4], plain}) == 5
        # added after start-up: one training layers without slots, one of another architecture
        base = tiny.BUILDERS["sdxl"]()
        name, linear = next((n, m) for n, m in base.unet.named_modules() if n.endswith("proj_in"))
        late = {f"{name}.lora_A.weight": torch.ones(2, linear.in_features) * 0.01}
        late[f"{name}.lora_B.weight"] = torch.ones(linear.out_features, 2) * 0.01
        save_diffusers(base, {"unet": late}, sdxl_only / "sdxl-late")
        shutil.copytree(lora_dir / "other-architecture", sdxl_only / "other-architecture")
        for added, words in (("sdxl-late", "no slot for"), ("other-architecture", "cannot be loaded")):
            answer = predict(http, small(seed=7, loras=loras((added, 1.0))))
            assert answer.status_code == 400 and words in answer.text, answer.text
        assert png(http) == plain and png(http, loras=loras(("sdxl-style", 1.0))) == images[0]
        assert metric(http, "compiled_graphs") == graphs, "switching adapters recompiled"
    assert "4 LoRA slots of rank 8" in server.log()


def test_openai_edits_form_field_and_videos_body_carry_loras(http, lora_server) -> None:
    """images.edit is multipart: `loras` arrives as JSON text; the Videos API takes it as a body field."""
    source = png_file(Image.new("RGB", (64, 64), (200, 40, 40)))
    chosen = loras(("sdxl-style", 1.0))
    expected = only_image(
        predict(
            http,
            {
                "prompt": "a fox",
                "image": "data:image/png;base64," + base64.b64encode(source).decode(),
                "strength": 0.5,
                "seed": 4,
                "num_inference_steps": 2,
                "loras": chosen,
            },
        )
    )[2]
    with openai.OpenAI(base_url=f"{lora_server.url}/openai/v1", api_key="unused", max_retries=0) as sdk:
        answer = sdk.images.edit(
            image=("fox.png", source, "image/png"),
            prompt="a fox",
            extra_body={"strength": 0.5, "seed": 4, "num_inference_steps": 2, "loras": json.dumps(chosen)},
        )
    assert base64.b64decode(answer.data[0].b64_json) == expected
    body = {"prompt": "a fox", "seconds": 1, "size": "64x64", "num_inference_steps": 2, "seed": 7}
    with_adapter = http.post("/openai/v1/videos", json={**body, "loras": loras(("wan-style", 1.0))})
    assert with_adapter.status_code == 200, with_adapter.text
    wrong = http.post("/openai/v1/videos", json={**body, "loras": loras(("sdxl-style", 1.0))})
    assert wrong.status_code == 400 and "this model is Wan" in wrong.text
