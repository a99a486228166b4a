"""v2 request tensors and parameters -> one generation's fields, read strictly.

Every way a v2 value can arrive is read here: JSON `data`, gRPC typed contents, raw bytes (gRPC
`raw_input_contents`) and request parameters (gRPC `InferParameter`, including the `double_param`
and `uint64_param` that tritonclient sends and KServe's proto lacks). A value is never coerced: a
float in an integer tensor, the string "false" in a BOOL tensor, an integer outside its datatype or
a BYTES element that is not UTF-8 text is a 400 naming the field, never a silent change.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np
from google.protobuf.unknown_fields import UnknownFieldSet
from kserve.protocol.infer_type import InferInput, InferRequest

from ..api.inputs import MAX_EDIT_IMAGES
from ..api.messages import named, shown
from ..api.request import FIELD_KINDS, FIELD_NAMES
from ..errors import RequestError

INTEGER_TYPES = ("INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64")
FLOAT_TYPES = ("FP16", "FP32", "FP64")
V2_DATATYPES = {
    "string": ("BYTES",),
    "bytes": ("BYTES",),
    "bytes_list": ("BYTES",),
    "int": INTEGER_TYPES,
    "float": (*FLOAT_TYPES, *INTEGER_TYPES),
    "bool": ("BOOL",),
}
NUMPY_TYPES = {name: np.dtype(name.lower().replace("fp", "float")) for name in (*INTEGER_TYPES, *FLOAT_TYPES)}
NUMPY_TYPES["BOOL"] = np.dtype(bool)
# v2 request parameters that steer the protocol itself, not the generation.
PROTOCOL_PARAMETERS = frozenset({"binary_data_output"})
BYTES_LENGTH = struct.Struct("<I")  # each serialized BYTES element: a little-endian uint32 length, then the bytes
# InferParameter fields of the v2 protocol that KServe 0.21's proto does not declare (they arrive as unknown
# fields): double_param = 4 (fixed64), uint64_param = 5 (varint).
_DOUBLE_PARAM, _UINT64_PARAM = 4, 5


def split_bytes_elements(data: bytes, name: str) -> list[bytes]:
    """The elements of a serialized BYTES tensor; a 400 naming `name` when the framing is broken."""
    elements, offset = [], 0
    while offset < len(data):
        if len(data) - offset < BYTES_LENGTH.size:
            raise RequestError(name, f"BYTES data ends inside a 4-byte length prefix at byte {offset}")
        (size,) = BYTES_LENGTH.unpack_from(data, offset)
        offset += BYTES_LENGTH.size
        if size > len(data) - offset:
            raise RequestError(
                name, f"BYTES element {len(elements)} claims {size} bytes, only {len(data) - offset} remain"
            )
        elements.append(data[offset : offset + size])
        offset += size
    return elements


def _integer_range(datatype: str) -> tuple[int, int]:
    info = np.iinfo(NUMPY_TYPES[datatype])
    return int(info.min), int(info.max)


def _typed(value: Any, kind: str, datatype: str, name: str) -> Any:
    """A JSON or gRPC typed value, checked against the field's kind and the tensor's datatype."""
    if kind in ("string", "bytes"):
        if isinstance(value, bytes):
            if kind == "bytes":
                return value
            try:
                return value.decode("utf-8")
            except UnicodeDecodeError:
                raise RequestError(name, "BYTES data is not UTF-8 text") from None
        if isinstance(value, str):
            return value
        raise RequestError(name, f"a BYTES tensor holds text, got {shown(value)}")
    if kind == "bool":
        if isinstance(value, bool):
            return value
        raise RequestError(name, f"a BOOL tensor holds true or false, got {shown(value)}")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestError(name, f"must be a number, got {shown(value)}")
    if datatype in INTEGER_TYPES:
        if not isinstance(value, int):
            raise RequestError(name, f"a tensor of datatype {datatype} holds integers, got {shown(value)}")
        low, high = _integer_range(datatype)
        if not low <= value <= high:
            raise RequestError(name, f"must be between {low} and {high} for {datatype}, got {shown(value)}")
        return value
    if not math.isfinite(value):
        raise RequestError(name, f"must be a finite number, got {shown(value)}")
    return float(value)


def _raw_value(raw: bytes, kind: str, datatype: str, name: str) -> Any:
    """The one element of raw tensor bytes (gRPC raw_input_contents)."""
    if datatype == "BYTES":
        elements = split_bytes_elements(raw, name)
        if len(elements) != 1:
            raise RequestError(name, f"shape [1] needs one BYTES element, got {len(elements)}")
        return _typed(elements[0], kind, datatype, name)
    dtype = NUMPY_TYPES[datatype]
    if len(raw) != dtype.itemsize:
        raise RequestError(name, f"a {datatype} tensor of shape [1] takes {dtype.itemsize} bytes, got {len(raw)}")
    return _typed(np.frombuffer(raw, dtype=dtype)[0].item(), kind, datatype, name)


def _single(data: Any, name: str) -> Any:
    """The one value of a [1] tensor's data (possibly nested as [[v]])."""
    value = data
    while isinstance(value, (list, tuple)):
        if len(value) != 1:
            raise RequestError(name, f"shape [1] needs exactly one value, got {len(value)}")
        value = value[0]
    return value


def _elements(tensor: InferInput, shape: list[Any]) -> list[bytes | str]:
    """The elements of a BYTES tensor of pictures (shape [n], 1 <= n <= MAX_EDIT_IMAGES), each file bytes or text."""
    name = tensor.name
    if len(shape) != 1 or not isinstance(shape[0], int) or not 1 <= shape[0] <= MAX_EDIT_IMAGES:
        raise RequestError(name, f"shape must be [n] with n from 1 to {MAX_EDIT_IMAGES}, got {shown(shape)}")
    raw = getattr(tensor, "_raw_data", None)
    data = split_bytes_elements(bytes(raw), name) if raw is not None else tensor.data
    values = list(data) if isinstance(data, (list, tuple)) else [data]
    if len(values) != shape[0]:
        raise RequestError(name, f"shape {shape} needs {shape[0]} element(s), got {len(values)}")
    return [_typed(value, "bytes", "BYTES", name) for value in values]


def _tensor_value(tensor: InferInput) -> Any:
    name = tensor.name
    if name not in FIELD_NAMES:
        raise RequestError(named(name), f"unknown input tensor (allowed: {', '.join(FIELD_NAMES)})")
    kind = FIELD_KINDS[name]
    if tensor.datatype not in V2_DATATYPES[kind]:
        allowed = ", ".join(V2_DATATYPES[kind])
        raise RequestError(name, f"datatype must be one of {allowed}, got {named(tensor.datatype)}")
    shape = list(tensor.shape)
    if kind == "bytes_list":
        return _elements(tensor, shape)
    if not all(isinstance(side, int) for side in shape) or math.prod(shape) != 1:
        raise RequestError(name, f"shape must be [1], got {shown(shape)}")
    raw = getattr(tensor, "_raw_data", None)  # KServe keeps gRPC raw contents here, undecoded
    if raw is not None:
        return _raw_value(bytes(raw), kind, tensor.datatype, name)
    return _typed(_single(tensor.data, name), kind, tensor.datatype, name)


def grpc_parameter(name: str, value: Any) -> Any:
    """The Python value of one gRPC InferParameter, the fields KServe's proto lacks included."""
    choice = value.WhichOneof("parameter_choice")
    if choice is not None:
        return getattr(value, choice)
    for field in UnknownFieldSet(value):
        if field.field_number == _DOUBLE_PARAM and field.wire_type == 1:
            return struct.unpack("<d", struct.pack("<Q", field.data))[0]
        if field.field_number == _UINT64_PARAM and field.wire_type == 0:
            return int(field.data)
    raise RequestError(named(name), "the gRPC parameter has no value this server can read")


def read_instance(request: InferRequest) -> dict[str, Any]:
    """One generation's fields from v2 input tensors (shape [1]) and request parameters."""
    values: dict[str, Any] = {}
    for tensor in request.inputs:
        value = _tensor_value(tensor)
        if tensor.name in values:
            raise RequestError(tensor.name, "given twice as an input tensor")
        values[tensor.name] = value
    parameters = request.parameters or {}
    if isinstance(parameters, dict):
        items = list(parameters.items())
    else:  # gRPC: a protobuf map of InferParameter
        items = [(name, grpc_parameter(name, value)) for name, value in parameters.items()]
    for name, value in items:
        if name in PROTOCOL_PARAMETERS:
            continue
        if name in values:
            raise RequestError(name, "given both as an input tensor and as a parameter")
        values[name] = value
    return values
