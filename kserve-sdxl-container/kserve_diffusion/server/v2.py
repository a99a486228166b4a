"""The v2 protocol (REST and gRPC): InferResponse out, and the model metadata (inputs: `v2_inputs.py`)."""

from __future__ import annotations

import uuid
from dataclasses import asdict
from typing import Any

from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

from .. import media
from ..api.messages import quoted
from ..api.request import FIELD_KINDS, VIDEO_TASKS, GenerationRequest
from ..api.results import GenerationResult
from ..errors import RequestError

_V2_DECLARED = {
    "string": "BYTES",
    "bytes": "BYTES",
    "bytes_list": "BYTES",
    "int": "INT64",
    "float": "FP32",
    "bool": "BOOL",
}


def check_requested_outputs(request: InferRequest, generation: GenerationRequest) -> None:
    """Raise RequestError (before any work) when a request asks for an output this task does not have."""
    names = ("video" if generation.task_type in VIDEO_TASKS else "images", "seed")
    for output in request.request_outputs or []:
        if output.name not in names:
            raise RequestError(
                "outputs", f"{generation.task_type} answers with {' and '.join(names)}, got {quoted(output.name)}"
            )


def _binary_outputs(request: InferRequest) -> dict[str, bool]:
    """Which outputs travel as raw bytes: REST's binary tensor extension (`binary_data_output`, or
    `binary_data` per requested output), or gRPC requests that sent raw input contents."""
    every = bool(request.use_binary_outputs)
    chosen = {name: every for name in ("images", "video", "seed")}
    if not request.from_grpc:
        for output in request.request_outputs or []:
            chosen[output.name] = bool(output.binary_data)
    return chosen


def build_response(request: InferRequest, result: GenerationResult, model_name: str) -> InferResponse:
    """The v2 answer: `images` BYTES [n] (or `video` BYTES [1]) holding the files with their content_type,
    and `seed`. Files are base64 text in JSON, and the raw file bytes when the output is sent binary."""
    name = "images" if result.video is None else "video"
    binary = _binary_outputs(request)
    parameters = {"content_type": result.content_type}
    if result.urls:  # response_format url: presigned URLs of the files, as text (or raw bytes, when binary)
        data: list[Any] = [url.encode() for url in result.urls] if binary[name] else list(result.urls)
        parameters["response_format"] = "url"
    else:
        data = list(result.files) if binary[name] else [media.to_base64(file) for file in result.files]
    files = InferOutput(name=name, shape=[len(data)], datatype="BYTES", data=data, parameters=parameters)
    seed = InferOutput(name="seed", shape=[1], datatype="INT64", data=[result.seed])
    parameters: dict[str, Any] = {"task_type": result.task_type}
    if result.video is not None:
        # KServe's gRPC parameters carry strings, booleans and integers only: the duration is num_frames / fps.
        parameters.update({k: v for k, v in asdict(result.video).items() if isinstance(v, int)})
    if result.cache is not None:  # integers: what gRPC parameters carry
        parameters.update({f"cache_{k}": v for k, v in asdict(result.cache).items()})
    return InferResponse(
        response_id=request.id or str(uuid.uuid4()),
        model_name=model_name,
        infer_outputs=[files, seed],
        parameters=parameters,
        use_binary_outputs=bool(request.use_binary_outputs),
        requested_outputs=None if request.from_grpc else request.request_outputs,
    )


def input_types() -> list[dict[str, Any]]:
    """The inputs `GET /v2/models/{name}` lists: every request field as a [1] tensor."""
    return [
        {"name": name, "datatype": _V2_DECLARED[kind], "shape": [-1] if kind == "bytes_list" else [1]}
        for name, kind in FIELD_KINDS.items()
    ]


def output_types(tasks: tuple[str, ...]) -> list[dict[str, Any]]:
    """The outputs `GET /v2/models/{name}` lists for a server serving `tasks`."""
    outputs = []
    if any(task not in VIDEO_TASKS for task in tasks):
        outputs.append({"name": "images", "datatype": "BYTES", "shape": [-1]})
    if any(task in VIDEO_TASKS for task in tasks):
        outputs.append({"name": "video", "datatype": "BYTES", "shape": [1]})
    return [*outputs, {"name": "seed", "datatype": "INT64", "shape": [1]}]
