"""Protocol adapters: v1 JSON and v2 InferRequest in, GenerationRequest fields out; results back."""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse, to_http_parameters

from . import media
from .errors import RequestError
from .schemas import FIELD_KINDS, FIELD_NAMES

_INTEGER_TYPES = ("INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64")
V2_DATATYPES = {
    "string": ("BYTES",),
    "bytes": ("BYTES",),
    "int": _INTEGER_TYPES,
    "float": ("FP16", "FP32", "FP64", *_INTEGER_TYPES),
    "bool": ("BOOL",),
}
_V2_DECLARED = {"string": "BYTES", "bytes": "BYTES", "int": "INT64", "float": "FP32", "bool": "BOOL"}
# v2 request parameters that steer the protocol itself, not the generation.
PROTOCOL_PARAMETERS = frozenset({"binary_data_output"})


@dataclass(frozen=True)
class GenerationResult:
    """What one generation produced, encoded."""

    task_type: str
    seed: int
    images: list[bytes]
    content_type: str


def _decode_json(payload: Any) -> Any:
    if isinstance(payload, (bytes, bytearray, str)):
        # KServe hands over bodies without a JSON Content-Type (plain `curl -d`) undecoded.
        try:
            return orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            raise RequestError("body", f"malformed JSON: {exc}") from None
    return payload


def v1_instances(payload: Any, max_instances: int) -> list[dict[str, Any]]:
    """The instances of a v1 body: {"instances": [...]} or seed 000's {"input": {...}}."""
    body = _decode_json(payload)
    if isinstance(body, dict) and set(body) == {"instances"} and isinstance(body["instances"], list):
        instances = body["instances"]
    elif isinstance(body, dict) and set(body) == {"input"}:
        instances = [body["input"]]
    else:
        keys = sorted(body) if isinstance(body, dict) else type(body).__name__
        raise RequestError("body", f'expected {{"instances": [{{...}}]}} or {{"input": {{...}}}}, got {keys}')
    if not 1 <= len(instances) <= max_instances:
        raise RequestError("instances", f"must hold between 1 and {max_instances} instances, got {len(instances)}")
    return instances


def v1_response(results: list[GenerationResult]) -> dict[str, Any]:
    """The v1 answer: one prediction per instance, images as data URLs."""
    return {
        "predictions": [
            {
                "task_type": result.task_type,
                "seed": result.seed,
                "images": [media.data_url(image, result.content_type) for image in result.images],
            }
            for result in results
        ]
    }


def _scalar(value: Any, kind: str) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    if kind == "bytes":  # image files: raw bytes (binary / gRPC) or base64 text (JSON)
        return value
    if kind == "string":
        if isinstance(value, bytes):
            try:
                return value.decode("utf-8")
            except UnicodeDecodeError:
                raise ValueError("BYTES data is not UTF-8 text") from None
        return value
    if kind == "int":
        return int(value)
    if kind == "float":
        return float(value)
    return bool(value)


def v2_instance(request: InferRequest) -> dict[str, Any]:
    """One generation's fields from v2 input tensors (shape [1]) and request parameters."""
    values: dict[str, Any] = {}
    for tensor in request.inputs:
        name = tensor.name
        if name not in FIELD_NAMES:
            raise RequestError(name, f"unknown input tensor (allowed: {', '.join(FIELD_NAMES)})")
        kind = FIELD_KINDS[name]
        if tensor.datatype not in V2_DATATYPES[kind]:
            allowed = ", ".join(V2_DATATYPES[kind])
            raise RequestError(name, f"datatype must be one of {allowed}, got {tensor.datatype}")
        if math.prod(tensor.shape) != 1:
            raise RequestError(name, f"shape must be [1], got {list(tensor.shape)}")
        try:
            array = tensor.as_numpy()
            values[name] = _scalar(array.reshape(-1)[0], kind)
        except (ValueError, TypeError, IndexError) as exc:
            raise RequestError(name, f"could not read the {tensor.datatype} tensor data: {exc}") from None
    parameters = request.parameters or {}
    if not isinstance(parameters, dict):  # gRPC: a protobuf map of InferParameter
        parameters = to_http_parameters(parameters)
    for name, value in parameters.items():
        if name in PROTOCOL_PARAMETERS:
            continue
        if name in values:
            raise RequestError(name, "given both as an input tensor and as a parameter")
        values[name] = value
    return values


def v2_response(request: InferRequest, result: GenerationResult, model_name: str) -> InferResponse:
    """The v2 answer: `images` BYTES [n] of base64 files with their content_type, and `seed`."""
    images = InferOutput(
        name="images",
        shape=[len(result.images)],
        datatype="BYTES",
        data=[media.to_base64(image) for image in result.images],
        parameters={"content_type": result.content_type},
    )
    seed = InferOutput(name="seed", shape=[1], datatype="INT64", data=[result.seed])
    return InferResponse(
        response_id=request.id or str(uuid.uuid4()),
        model_name=model_name,
        infer_outputs=[images, seed],
        parameters={"task_type": result.task_type},
        # KServe's gRPC convention: raw input contents in, raw output contents out.
        use_binary_outputs=request.from_grpc and request.use_binary_outputs,
    )


def v2_input_types() -> list[dict[str, Any]]:
    """The inputs `GET /v2/models/{name}` lists: every request field as a [1] tensor."""
    return [{"name": name, "datatype": _V2_DECLARED[kind], "shape": [1]} for name, kind in FIELD_KINDS.items()]


def v2_output_types() -> list[dict[str, Any]]:
    """The outputs `GET /v2/models/{name}` lists."""
    return [
        {"name": "images", "datatype": "BYTES", "shape": [-1]},
        {"name": "seed", "datatype": "INT64", "shape": [1]},
    ]
