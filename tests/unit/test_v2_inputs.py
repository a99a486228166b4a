"""v2 values read strictly: no coercion, gRPC double/uint64 parameters, BYTES framing."""

from __future__ import annotations

import struct

import pytest
from kserve.protocol.grpc.grpc_predict_v2_pb2 import InferParameter
from kserve.protocol.infer_type import InferInput, InferRequest
from kserve_diffusion.errors import RequestError
from kserve_diffusion.server.v2_inputs import grpc_parameter, read_instance, split_bytes_elements


def _read(*tensors: InferInput, parameters: dict | None = None) -> dict:
    return read_instance(InferRequest("sdxl", list(tensors), parameters=parameters))


def test_bytes_framing_is_checked() -> None:
    assert split_bytes_elements(struct.pack("<I", 3) + b"abc" + struct.pack("<I", 0), "x") == [b"abc", b""]
    with pytest.raises(RequestError, match="x: BYTES data ends inside a 4-byte length prefix at byte 0"):
        split_bytes_elements(b"ab", "x")
    with pytest.raises(RequestError, match="claims 1000000000 bytes, only 3 remain"):
        split_bytes_elements(struct.pack("<I", 10**9) + b"abc", "x")


@pytest.mark.parametrize(
    ("datatype", "value", "words"),
    [
        ("INT64", 1.9, "holds integers, got 1.9"),
        ("INT64", True, "must be a number, got true"),
        ("INT8", 300, "between -128 and 127"),
        ("UINT8", -1, "between 0 and 255"),
        ("INT64", 2**70, "between -9223372036854775808"),
    ],
)
def test_integers_are_never_coerced(datatype: str, value: object, words: str) -> None:
    with pytest.raises(RequestError, match=words):
        _read(InferInput("num_inference_steps", [1], datatype, data=[value]))


def test_bool_takes_true_or_false_only() -> None:
    assert _read(InferInput("use_refiner", [1], "BOOL", data=[False])) == {"use_refiner": False}
    with pytest.raises(RequestError, match='use_refiner: a BOOL tensor holds true or false, got "false"'):
        _read(InferInput("use_refiner", [1], "BOOL", data=["false"]))


def test_floats_accept_integers_and_refuse_nan() -> None:
    assert _read(InferInput("guidance_scale", [1], "INT32", data=[5])) == {"guidance_scale": 5.0}
    with pytest.raises(RequestError, match="finite"):
        _read(InferInput("guidance_scale", [1], "FP32", data=[float("nan")]))


def test_raw_numeric_tensors_must_be_their_size() -> None:
    seed = InferInput("seed", [1], "INT64")
    seed._raw_data = struct.pack("<q", 7)
    assert _read(seed) == {"seed": 7}
    seed._raw_data = b"\x01\x02\x03"
    with pytest.raises(RequestError, match="seed: a INT64 tensor of shape \\[1\\] takes 8 bytes, got 3"):
        _read(seed)


def test_grpc_double_and_uint64_parameters_are_read() -> None:
    double = InferParameter()
    double.ParseFromString(bytes([0x21]) + struct.pack("<d", 99.5))  # field 4, fixed64: tritonclient's double_param
    unsigned = InferParameter()
    unsigned.ParseFromString(bytes([0x28, 7]))  # field 5, varint: uint64_param
    assert grpc_parameter("guidance_scale", double) == 99.5
    assert grpc_parameter("seed", unsigned) == 7
    assert grpc_parameter("prompt", InferParameter(string_param="fox")) == "fox"
    with pytest.raises(RequestError, match="has no value"):
        grpc_parameter("x", InferParameter())


def test_unknown_and_duplicate_names_are_named_safely() -> None:
    with pytest.raises(RequestError, match='^"x{76}\\.\\.\\.: unknown input tensor'):
        _read(InferInput("x" * 1000, [1], "BYTES", data=["a"]))
    with pytest.raises(RequestError, match="seed: given both"):
        _read(InferInput("seed", [1], "INT64", data=[1]), parameters={"seed": 2})
