"""v2 REST (httpx, tritonclient) and v2 gRPC (tritonclient) against a real server process."""

from __future__ import annotations

import base64

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient
from kserve.protocol.infer_type import InferInput, InferRequest

from tests.helpers import grpc_infer, open_image

INFER = "/v2/models/sdxl/infer"


def tensor(name: str, datatype: str, value: object) -> dict:
    return {"name": name, "shape": [1], "datatype": datatype, "data": [value]}


def test_v2_rest_tensors_and_parameters(client: httpx.Client) -> None:
    body = {
        "id": "my-request",
        "inputs": [
            tensor("prompt", "BYTES", "a red fox"),
            tensor("seed", "INT32", 42),
            tensor("guidance_scale", "INT64", 5),  # integers are fine for float fields
            tensor("height", "UINT16", 128),
        ],
        "parameters": {"width": 64, "num_inference_steps": 2, "num_images": 2},
    }
    response = client.post(INFER, json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["id"] == "my-request"
    outputs = {output["name"]: output for output in answer["outputs"]}
    images = outputs["images"]
    assert (images["datatype"], images["shape"], images["parameters"]["content_type"]) == ("BYTES", [2], "image/png")
    decoded = [open_image(base64.b64decode(item)) for item in images["data"]]
    assert [image.size for image in decoded] == [(64, 128), (64, 128)]
    assert outputs["seed"] == {"name": "seed", "shape": [1], "datatype": "INT64", "data": [42], "parameters": None}


def test_v2_same_seed_as_v1_gives_same_image(client: httpx.Client) -> None:
    params = {"prompt": "a red fox", "height": 64, "width": 64, "num_inference_steps": 2, "seed": 11}
    v1 = client.post("/v1/models/sdxl:predict", json={"instances": [params]}).json()
    v2 = client.post(INFER, json={"inputs": [], "parameters": params}).json()
    v1_png = base64.b64decode(v1["predictions"][0]["images"][0].split(",", 1)[1])
    assert base64.b64decode(v2["outputs"][0]["data"][0]) == v1_png


@pytest.mark.parametrize(
    ("inputs", "parameters", "words"),
    [
        ([tensor("prompt", "INT64", 3)], {}, "prompt: datatype must be one of BYTES, got INT64"),
        ([tensor("prompt", "BYTES", "x"), tensor("seed", "FP32", 1.0)], {}, "seed: datatype must be one of INT8"),
        ([tensor("prompt", "BYTES", "x"), tensor("steps", "INT64", 3)], {}, "steps: unknown input tensor"),
        ([{"name": "prompt", "shape": [2], "datatype": "BYTES", "data": ["a", "b"]}], {}, "prompt: shape must be [1]"),
        ([tensor("prompt", "BYTES", "x")], {"prompt": "y"}, "prompt: given both"),
        ([tensor("prompt", "BYTES", "x")], {"num_inference_steps": 0}, "num_inference_steps:"),
        ([tensor("prompt", "BYTES", "x")], {"sampler": "DDIM"}, "sampler: unknown field"),
        ([], {}, "prompt: required"),
    ],
)
def test_v2_bad_tensors_are_400(client: httpx.Client, inputs: list, parameters: dict, words: str) -> None:
    response = client.post(INFER, json={"inputs": inputs, "parameters": parameters})
    assert response.status_code == 400, response.text
    assert words in response.json()["error"]


def test_v2_model_metadata_lists_inputs_and_outputs(client: httpx.Client) -> None:
    metadata = client.get("/v2/models/sdxl").json()
    inputs = {item["name"]: item for item in metadata["inputs"]}
    assert inputs["prompt"] == {"name": "prompt", "datatype": "BYTES", "shape": [1]}
    assert inputs["seed"]["datatype"] == "INT64"
    assert inputs["guidance_scale"]["datatype"] == "FP32"
    assert {item["name"] for item in metadata["outputs"]} == {"images", "seed"}  # no video model on this server


def _grpc_request(*inputs: InferInput, parameters: dict | None = None) -> InferRequest:
    return InferRequest(model_name="sdxl", infer_inputs=list(inputs), parameters=parameters)


def _input(name: str, datatype: str, value: object, binary: bool = True) -> InferInput:
    item = InferInput(name, [1], datatype)
    dtype = {"BYTES": object, "INT64": np.int64, "INT32": np.int32, "FP32": np.float32}[datatype]
    item.set_data_from_numpy(np.array([value], dtype=dtype), binary_data=binary)
    return item


@pytest.mark.parametrize("binary", [True, False], ids=["raw_contents", "typed_contents"])
def test_v2_grpc_round_trip(base_server, binary: bool) -> None:
    request = _grpc_request(
        _input("prompt", "BYTES", b"a red fox", binary),
        _input("seed", "INT64", 42, binary),
        _input("height", "INT32", 64, binary),
        _input("guidance_scale", "FP32", 5.0, binary),
        parameters={"width": 128, "num_inference_steps": 2},
    )
    response = grpc_infer(base_server.grpc_target, request)
    outputs = {output.name: output for output in response.outputs}
    images = outputs["images"].as_numpy()
    assert images.shape == (1,)
    # raw input contents in, raw output contents out: the file itself; typed contents: base64 as in JSON
    png = images[0] if binary else base64.b64decode(images[0])
    assert open_image(png).size == (128, 64)
    assert outputs["seed"].as_numpy().tolist() == [42]
    assert outputs["images"].parameters["content_type"].string_param == "image/png"
    # same seed over gRPC and REST: the same image bytes
    rest = httpx.post(
        f"{base_server.url}{INFER}",
        json={
            "inputs": [tensor("prompt", "BYTES", "a red fox")],
            "parameters": {"seed": 42, "height": 64, "width": 128, "num_inference_steps": 2, "guidance_scale": 5.0},
        },
        timeout=60,
    ).json()
    assert base64.b64decode(rest["outputs"][0]["data"][0]) == png


def test_v2_grpc_bad_input_is_invalid_argument(base_server) -> None:
    for request, words in [
        (
            _grpc_request(_input("prompt", "BYTES", b"x"), _input("height", "INT64", 100)),
            "height: must be a multiple of 8",
        ),
        (_grpc_request(_input("prompt", "FP32", 1.0)), "prompt: datatype must be one of BYTES"),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            grpc_infer(base_server.grpc_target, request)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert words in caught.value.details()


@pytest.mark.parametrize("binary", [True, False])
def test_v2_rest_with_tritonclient_http(base_server, binary: bool) -> None:
    client = httpclient.InferenceServerClient(base_server.url.removeprefix("http://"))
    prompt = httpclient.InferInput("prompt", [1], "BYTES")
    prompt.set_data_from_numpy(np.array([b"a red fox"], dtype=object), binary_data=binary)
    # KServe 0.21 reads a body without a JSON Content-Type as binary: JSON-only requests name it.
    headers = None if binary else {"Content-Type": "application/json"}
    result = client.infer(
        "sdxl", [prompt], parameters={"height": 64, "width": 64, "num_inference_steps": 2, "seed": 8}, headers=headers
    )
    assert result.as_numpy("seed").tolist() == [8]
    # no outputs named: tritonclient asks for binary_data_output, so the file comes raw
    assert open_image(result.as_numpy("images")[0]).size == (64, 64)
