"""Protocol adapters: v1 JSON and v2 InferRequest in, GenerationRequest fields out; results back."""

from __future__ import annotations

import math
import uuid
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import orjson
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse, to_http_parameters
from PIL.Image import Image

from . import media
from .errors import RequestError
from .schemas import FIELD_KINDS, FIELD_NAMES, GenerationRequest

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
class VideoInfo:
    """What a client needs to know about a returned video."""

    num_frames: int
    fps: int
    width: int
    height: int
    duration_seconds: float


@dataclass(frozen=True)
class GenerationResult:
    """What one generation produced, encoded: image files, or one video file with its VideoInfo."""

    task_type: str
    seed: int
    files: list[bytes]
    output_format: str
    width: int
    height: int
    video: VideoInfo | None = None

    @property
    def content_type(self) -> str:
        """The MIME type of the files."""
        return media.content_type(self.output_format)


def encode_result(
    request: GenerationRequest,
    seed: int,
    output: list[Image] | media.Video,
    png_compress_level: int = media.DEFAULT_PNG_COMPRESS_LEVEL,
) -> GenerationResult:
    """Encode a runner's output as the request asks (CPU work: call it off the event loop)."""
    assert request.task_type is not None and request.output_format is not None
    encoding = media.Encoding(
        request.output_format,
        request.quality if request.quality is not None else media.DEFAULT_QUALITY,
        png_compress_level,
    )
    task, file_format = request.task_type, request.output_format
    if isinstance(output, media.Video):
        height, width = output.frames.shape[1:3]
        info = VideoInfo(len(output.frames), output.fps, width, height, round(output.duration_seconds, 3))
        return GenerationResult(task, seed, [media.encode_video(output, encoding)], file_format, width, height, info)
    width, height = output[0].size
    files = [media.encode_image(image, encoding) for image in output]
    return GenerationResult(task, seed, files, file_format, width, height)


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


def _v1_prediction(result: GenerationResult) -> dict[str, Any]:
    prediction: dict[str, Any] = {"task_type": result.task_type, "seed": result.seed}
    if result.video is None:
        prediction["images"] = [media.data_url(data, result.content_type) for data in result.files]
    else:
        prediction["video"] = media.data_url(result.files[0], result.content_type)
        prediction.update(asdict(result.video))
    return prediction


def v1_response(results: list[GenerationResult]) -> dict[str, Any]:
    """The v1 answer: one prediction per instance, images (or the video) as data URLs."""
    return {"predictions": [_v1_prediction(result) for result in results]}


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


def check_requested_outputs(request: InferRequest, generation: GenerationRequest) -> None:
    """Raise RequestError (before any work) when a request asks for an output this task does not have."""
    names = ("video" if generation.task_type == "text2video" else "images", "seed")
    for output in request.request_outputs or []:
        if output.name not in names:
            raise RequestError(
                "outputs", f"{generation.task_type} answers with {' and '.join(names)}, got {output.name!r}"
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


def v2_response(request: InferRequest, result: GenerationResult, model_name: str) -> InferResponse:
    """The v2 answer: `images` BYTES [n] (or `video` BYTES [1]) holding the files with their content_type,
    and `seed`. Files are base64 text in JSON, and the raw file bytes when the output is sent binary."""
    name = "images" if result.video is None else "video"
    binary = _binary_outputs(request)
    files = InferOutput(
        name=name,
        shape=[len(result.files)],
        datatype="BYTES",
        data=list(result.files) if binary[name] else [media.to_base64(data) for data in result.files],
        parameters={"content_type": result.content_type},
    )
    seed = InferOutput(name="seed", shape=[1], datatype="INT64", data=[result.seed])
    parameters: dict[str, Any] = {"task_type": result.task_type}
    if result.video is not None:
        # KServe's gRPC parameters carry strings, booleans and integers only: the duration is num_frames / fps.
        parameters.update({k: v for k, v in asdict(result.video).items() if isinstance(v, int)})
    return InferResponse(
        response_id=request.id or str(uuid.uuid4()),
        model_name=model_name,
        infer_outputs=[files, seed],
        parameters=parameters,
        use_binary_outputs=bool(request.use_binary_outputs),
        requested_outputs=None if request.from_grpc else request.request_outputs,
    )


def v2_input_types() -> list[dict[str, Any]]:
    """The inputs `GET /v2/models/{name}` lists: every request field as a [1] tensor."""
    return [{"name": name, "datatype": _V2_DECLARED[kind], "shape": [1]} for name, kind in FIELD_KINDS.items()]


def v2_output_types(tasks: tuple[str, ...]) -> list[dict[str, Any]]:
    """The outputs `GET /v2/models/{name}` lists for a server serving `tasks`."""
    outputs = []
    if any(task != "text2video" for task in tasks):
        outputs.append({"name": "images", "datatype": "BYTES", "shape": [-1]})
    if "text2video" in tasks:
        outputs.append({"name": "video", "datatype": "BYTES", "shape": [1]})
    return [*outputs, {"name": "seed", "datatype": "INT64", "shape": [1]}]
