"""Attacks and malformed input against a real server process: every one a clean 4xx, never a 500, a hang,
a lost model, a forged log line or an echoed secret; health keeps answering throughout."""

from __future__ import annotations

import json
import re
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub

from tests.conftest import ServerProcess, start_server
from tests.helpers import small

BODY_LIMIT = 2_000_000
BODY_TIMEOUT = 3
HEADER_TIMEOUT = 2
INFER = "/v2/models/sdxl/infer"
PREDICT = "/v1/models/sdxl:predict"
PYTHON_CLASS_NAME = re.compile(r"\b[A-Z][A-Za-z]*(Error|Exception)\b")
PROMPT = {"name": "prompt", "datatype": "BYTES", "shape": [1], "data": ["a red fox"]}


@pytest.fixture(scope="module")
def server(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The tiny SDXL base with small body and time limits, so the tests cross them cheaply."""
    args = ["--model_id", str(tiny_models["sdxl"]), "--max_body_bytes", str(BODY_LIMIT)]
    args += ["--body_timeout", str(BODY_TIMEOUT), "--header_timeout", str(HEADER_TIMEOUT)]
    server = start_server(args, tmp_path_factory.mktemp("logs") / "hardening.log")
    yield server
    server.stop()


@pytest.fixture()
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    """A client for the hardened server."""
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


def assert_clean_4xx(response: httpx.Response, status: int, *words: str) -> None:
    """The status, a short message naming the problem, no Python class name."""
    assert response.status_code == status, response.text[:500]
    assert len(response.content) < 2000, len(response.content)
    assert not PYTHON_CLASS_NAME.search(response.text), response.text
    for word in words:
        assert word in response.text, (word, response.text)


def binary(header: dict | list | bytes, data: bytes = b"", length: str | None = None) -> tuple[bytes, dict]:
    """A v2 binary-extension body and its headers."""
    head = header if isinstance(header, bytes) else json.dumps(header).encode()
    headers = {"Inference-Header-Content-Length": length or str(len(head)), "Content-Type": "application/octet-stream"}
    return head + data, headers


def element(data: bytes, declared: int | None = None) -> bytes:
    """One serialized BYTES element (its 4-byte length prefix may lie)."""
    return struct.pack("<I", len(data) if declared is None else declared) + data


def tensor(name: str, datatype: str, size: int) -> dict:
    return {"name": name, "datatype": datatype, "shape": [1], "parameters": {"binary_data_size": size}}


def grpc_stub(server: ServerProcess) -> GRPCInferenceServiceStub:
    return GRPCInferenceServiceStub(grpc.insecure_channel(server.grpc_target))


# --- 1. the repository API cannot take the model away ---


def test_repository_load_and_unload_are_refused_and_the_model_keeps_serving(
    server: ServerProcess, http: httpx.Client
) -> None:
    assert_clean_4xx(http.post("/v2/repository/models/sdxl/unload"), 403, "cannot be unloaded")
    assert_clean_4xx(http.post("/v2/repository/models/sdxl/load"), 403, "cannot be loaded")
    assert_clean_4xx(http.post("/v2/repository/models/other/load"), 404, "not served here")
    stub = grpc_stub(server)
    with pytest.raises(grpc.RpcError) as refused:
        stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="sdxl"))
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.RpcError) as unknown:
        stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="other"))
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    assert http.get("/v2/health/ready").json() == {"ready": True}
    assert http.post(PREDICT, json={"instances": [small()]}).status_code == 200


# --- 2, 3. malformed v2 binary requests ---

MALFORMED_BINARY = [
    ({"inputs": 5}, b"", None, "inputs: must be a list"),
    ([1, 2, 3], b"", None, "must be an object"),
    ({"inputs": ["prompt"]}, b"", None, "inputs[0]: must be an object"),
    ({"inputs": [tensor("prompt", "BYTES", "abc")]}, element(b"x"), None, "binary_data_size must be a count"),  # type: ignore[arg-type]
    ({"inputs": [tensor("prompt", "BYTES", 1.5)]}, element(b"x"), None, "binary_data_size must be a count"),  # type: ignore[arg-type]
    ({"inputs": [tensor("prompt", "BYTES", -4)]}, element(b"x"), None, "binary_data_size must be a count"),
    ({"inputs": [PROMPT]}, b"", "abc", "inference-header-content-length: must be"),
    ({"inputs": [PROMPT]}, b"", "999999", "inference-header-content-length: must be"),
    ({"inputs": [PROMPT, tensor("seed", "INT64", 3)]}, b"\x01" * 3, None, "takes 8 bytes, got 3"),
    ({"inputs": [PROMPT, tensor("seed", "INT64", 16)]}, b"\x01" * 16, None, "takes 8 bytes, got 16"),
    ({"inputs": [tensor("prompt", "BYTES", 8)]}, element(b"abcd", declared=1000), None, "claims 1000 bytes"),
    ({"inputs": [tensor("prompt", "BYTES", 2)]}, b"ab", None, "ends inside a 4-byte length prefix"),
    ({"inputs": [tensor("prompt", "BYTES", 20)]}, element(b"x") * 2, None, "runs past the body"),
    ({"inputs": [PROMPT]}, b"trailing", None, "bytes after the last binary tensor"),
    ({"inputs": [{"name": "prompt", "datatype": "FP128", "shape": [1], "data": [1]}]}, b"", None, "datatype must be"),
    ({"inputs": [{"name": "prompt", "datatype": "BYTES", "shape": "1", "data": ["x"]}]}, b"", None, "shape must be"),
    ({"inputs": [PROMPT], "outputs": "images"}, b"", None, "outputs: must be a list"),
]


@pytest.mark.parametrize(("header", "data", "length", "words"), MALFORMED_BINARY)
def test_malformed_binary_requests_are_400s(
    http: httpx.Client, header: dict, data: bytes, length: str | None, words: str
) -> None:
    body, headers = binary(header, data, length)
    assert_clean_4xx(http.post(INFER, content=body, headers=headers), 400, words)


def test_invalid_utf8_prompt_is_a_short_400_without_echo(server: ServerProcess, http: httpx.Client) -> None:
    garbage = b"\xff\xfe" * 500_000  # 1 MB that is not UTF-8
    body, headers = binary({"inputs": [tensor("prompt", "BYTES", len(garbage) + 4)]}, element(garbage))
    assert_clean_4xx(http.post(INFER, content=body, headers=headers), 400, "prompt: BYTES data is not UTF-8 text")
    assert max(len(line) for line in server.log().splitlines()) < 5000


# --- 5, 9. v2 values are never coerced ---


@pytest.mark.parametrize(
    ("datatype", "value", "words"),
    [
        ("INT64", 2**70, "must be between -9223372036854775808 and 9223372036854775807"),
        ("INT8", 300, "must be between -128 and 127"),
        ("UINT8", -1, "must be between 0 and 255"),
        ("INT64", 1.9, "holds integers, got 1.9"),
        ("INT64", "12", "must be a number"),
    ],
)
def test_v2_json_integers_are_checked_not_coerced(http: httpx.Client, datatype: str, value: object, words: str) -> None:
    steps = {"name": "num_inference_steps", "datatype": datatype, "shape": [1], "data": [value]}
    assert_clean_4xx(http.post(INFER, json={"inputs": [PROMPT, steps]}), 400, "num_inference_steps", words)


def test_v2_bool_takes_true_or_false_only(http: httpx.Client) -> None:
    flag = {"name": "use_refiner", "datatype": "BOOL", "shape": [1], "data": ["false"]}
    assert_clean_4xx(http.post(INFER, json={"inputs": [PROMPT, flag]}), 400, "use_refiner: a BOOL tensor holds true")


def test_v2_json_bodies_of_the_wrong_shape_are_400s(http: httpx.Client) -> None:
    assert_clean_4xx(http.post(INFER, json={"inputs": 5}), 400, "inputs")
    assert_clean_4xx(http.post(INFER, json=[1, 2, 3]), 400, "body")
    assert_clean_4xx(http.post(INFER, content=b"{", headers={"Content-Type": "application/json"}), 400)


# --- 4, 8, 16. gRPC ---

TRITON_FLOATS = """
import sys, numpy as np, tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException
client = grpcclient.InferenceServerClient(sys.argv[1])
prompt = grpcclient.InferInput("prompt", [1], "BYTES")
prompt.set_data_from_numpy(np.array([b"a red fox"], dtype=object))
base = {"height": 64, "width": 64, "num_inference_steps": 2, "seed": 3}
for extra in ({"guidance_scale": 99.0}, {"strength": 1.5}, {"guidance_scal": 1.5}, {"high_noise_frac": 1.5}):
    try:
        client.infer("sdxl", [prompt], parameters={**base, **extra})
        print("OK", list(extra))
    except InferenceServerException as exc:
        print(exc.status(), exc.message().replace("\\n", " ")[:300])
result = client.infer("sdxl", [prompt], parameters={**base, "guidance_scale": 2.5})
print("OK float applied", result.as_numpy("seed").tolist())
"""


def test_grpc_float_parameters_are_applied_and_validated(server: ServerProcess) -> None:
    # tritonclient's gRPC stubs and KServe's share proto names, so it runs in its own process.
    result = subprocess.run(
        [sys.executable, "-c", TRITON_FLOATS, server.grpc_target], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith("StatusCode.INVALID_ARGUMENT") and "guidance_scale" in lines[0], lines
    assert lines[1].startswith("StatusCode.INVALID_ARGUMENT") and "strength" in lines[1], lines
    assert lines[2].startswith("StatusCode.INVALID_ARGUMENT") and "guidance_scal" in lines[2], lines
    assert lines[3].startswith("StatusCode.INVALID_ARGUMENT") and "high_noise_frac" in lines[3], lines
    assert lines[4] == "OK float applied [3]", lines


@pytest.mark.parametrize(
    ("raw", "words"), [(b"ab", "ends inside a 4-byte length prefix"), (element(b"abc", 10**9), "claims 1000000000")]
)
def test_grpc_malformed_raw_bytes_are_invalid_argument(server: ServerProcess, raw: bytes, words: str) -> None:
    request = pb.ModelInferRequest(
        model_name="sdxl",
        inputs=[pb.ModelInferRequest.InferInputTensor(name="prompt", datatype="BYTES", shape=[1])],
        raw_input_contents=[raw],
    )
    with pytest.raises(grpc.RpcError) as refused:
        grpc_stub(server).ModelInfer(request, timeout=30)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert words in refused.value.details()


TRITON_LARGE = """
import sys, numpy as np, tritonclient.grpc as grpcclient
client = grpcclient.InferenceServerClient(sys.argv[1])
prompt = grpcclient.InferInput("prompt", [1], "BYTES")
prompt.set_data_from_numpy(np.array([b"noise"], dtype=object))
parameters = {"height": 1024, "width": 1024, "num_inference_steps": 1, "num_images": 4, "seed": 1}
images = client.infer("sdxl", [prompt], parameters=parameters).as_numpy("images")
print(len(images), sum(len(image) for image in images))
"""


def test_grpc_answers_larger_than_8_mb(server: ServerProcess) -> None:
    """Four 1024x1024 PNGs of the random model's noise: more than gRPC's default 8 MB message."""
    result = subprocess.run(
        [sys.executable, "-c", TRITON_LARGE, server.grpc_target], capture_output=True, text=True, timeout=280
    )
    assert result.returncode == 0, result.stderr[-3000:]
    count, total = map(int, result.stdout.split())
    assert count == 4 and total > 8 * 1024 * 1024, (count, total)


def test_grpc_client_errors_log_one_line(server: ServerProcess) -> None:
    before = server.log().count("Traceback")
    with pytest.raises(grpc.RpcError) as unknown:
        grpc_stub(server).ModelInfer(pb.ModelInferRequest(model_name="nope"), timeout=30)
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    assert server.log().count("Traceback") == before


# --- 6, 7, 12. URLs, OpenAI sizes, echoed values ---


def test_unparsable_image_url_is_400(http: httpx.Client) -> None:
    answer = http.post(PREDICT, json={"instances": [small(image_url="http://[::1", num_inference_steps=4)]})
    assert_clean_4xx(answer, 400, "image_url: is not a valid URL")


def test_openai_size_with_thousands_of_digits_is_400_in_openai_shape(http: httpx.Client) -> None:
    answer = http.post("/openai/v1/images/generations", json={"prompt": "x", "size": "1" * 5000 + "x64"})
    assert_clean_4xx(answer, 400)
    assert answer.json()["error"]["param"] == "size"


def test_large_bad_values_are_not_echoed(http: httpx.Client) -> None:
    form = {"prompt": "x", "seed": "9" * 1_000_000}
    files = {"image": ("a.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 100, "image/png")}
    assert_clean_4xx(http.post("/openai/v1/images/edits", data=form, files=files), 400, "seed: must be a number")
    assert_clean_4xx(http.post(f"/v1/models/{'m' * 60_000}:predict", json={"instances": [small()]}), 404)
    assert_clean_4xx(http.post("/openai/v1/images/generations", json={"prompt": "x", "model": "m" * 60_000}), 404)


# --- 10, 11, 14. what reaches the log ---


def test_secrets_stay_out_of_answers_and_logs(server: ServerProcess, http: httpx.Client) -> None:
    signed = "https://bucket.example/fox.png?X-Amz-Signature=TOPSECRET123"
    answer = http.post(PREDICT, json={"instances": [small(image_url=[signed])]})
    assert_clean_4xx(answer, 400, "image_url")
    assert "TOPSECRET123" not in answer.text
    http.get("/v2/health/ready?token=TOPSECRET456")
    time.sleep(0.3)
    log = server.log()
    assert "TOPSECRET123" not in log and "TOPSECRET456" not in log
    assert "GET /v2/health/ready HTTP/1.1" in log  # logged, without its query


def test_forged_log_lines_and_request_ids_are_neutralised(server: ServerProcess, http: httpx.Client) -> None:
    user = "alice\n2026-01-01 00:00:00.000 1 kserve.diffusion INFO FORGED-BY-USER"
    answer = http.post(
        "/openai/v1/images/generations",
        json={"prompt": "x", "size": "64x64", "user": user, "num_inference_steps": 1},
    )
    assert answer.status_code == 200, answer.text
    for request_id in ("r\tseed=0 FORGED-BY-ID", "x" * 10_000):
        response = http.post(PREDICT, json={"instances": [small()]}, headers={"x-request-id": request_id})
        assert response.status_code == 200
    log = server.log()
    assert not any(line.startswith("2026-01-01") for line in log.splitlines())  # no forged line
    assert "user=alice\\n2026-01-01" in log  # the newline escaped, on the request's own line
    assert "FORGED-BY-ID" not in log and "x" * 200 not in log
    assert max(len(line) for line in log.splitlines()) < 5000


def test_client_errors_log_one_line_without_traceback(server: ServerProcess, http: httpx.Client) -> None:
    before = server.log().count("Traceback")
    http.post("/v1/models/unknown:predict", json={"instances": [small()]})
    http.post(PREDICT, content=b"{not json")
    http.post(INFER, content=b"{", headers={"Content-Type": "application/json"})
    assert server.log().count("Traceback") == before


# --- 13. bodies and slow clients, with health answering throughout ---


class HealthProbe:
    """Probes readiness every 50 ms in a thread and keeps the latencies."""

    def __init__(self, url: str) -> None:
        self.url, self.latencies, self.failures = url, [], 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=5) as client:
            while not self._stop.is_set():
                started = time.perf_counter()
                try:
                    ok = client.get("/v2/health/ready").status_code == 200
                except httpx.HTTPError:
                    ok = False
                self.latencies.append(time.perf_counter() - started)
                self.failures += not ok
                time.sleep(0.05)

    def __enter__(self) -> HealthProbe:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def p99(self) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def raw_request(server: ServerProcess, head: bytes, body: bytes = b"", wait: float = 10) -> bytes:
    """Send `head` and `body` on a fresh socket, then read until the server closes it (or `wait` passes)."""
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=wait) as sock:
        sock.sendall(head + body)
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except TimeoutError:
            return received + b"<still open>"
        return received


def chunked_upload(server: ServerProcess, total: int) -> bytes:
    """POST `total` bytes with chunked transfer encoding; the answer (the server may stop reading early)."""
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=30) as sock:
        sock.sendall(b"POST /v1/models/sdxl:predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        piece = b"x" * 65536
        try:
            for _ in range(total // len(piece) + 1):
                sock.sendall(b"%x\r\n" % len(piece) + piece + b"\r\n")
            sock.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # the server answered and closed before the upload ended
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except OSError:
            pass
        return received


def closed_by_server(sock: socket.socket) -> bool:
    try:
        return sock.recv(100) == b""
    except ConnectionResetError:
        return True


def test_body_limits_and_slow_clients(server: ServerProcess) -> None:
    with HealthProbe(server.url) as probe:
        # A declared body over the limit: refused before any of it is sent.
        started = time.monotonic()
        head = b"POST /v1/models/sdxl:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n"
        answer = raw_request(server, head)
        assert answer.startswith(b"HTTP/1.1 413") and b"--max_body_bytes" in answer, answer[:300]
        assert time.monotonic() - started < BODY_TIMEOUT  # answered at once, not after waiting for the body
        # A chunked body (no Content-Length) that grows past the limit while streaming.
        answer = chunked_upload(server, BODY_LIMIT + 200_000)
        assert answer.startswith(b"HTTP/1.1 413"), answer[:300]
        # A half-sent body: 408 once --body_timeout passes, and the connection is closed.
        head = b"POST /v1/models/sdxl:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n"
        answer = raw_request(server, head, b'{"instances": [', wait=BODY_TIMEOUT + 10)
        assert answer.startswith(b"HTTP/1.1 408") and not answer.endswith(b"<still open>"), answer[:300]
        # 50 slowloris connections: each sends part of its headers and stalls; all are closed.
        sockets = [
            socket.create_connection(("127.0.0.1", server.http_port), timeout=HEADER_TIMEOUT + 10) for _ in range(50)
        ]
        for sock in sockets:
            sock.sendall(b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        closed = sum(closed_by_server(sock) for sock in sockets)  # blocks until the server closes each
        for sock in sockets:
            sock.close()
        assert closed == 50
        # A connection that never sends anything is closed too.
        assert raw_request(server, b"", wait=HEADER_TIMEOUT + 10) == b""
    assert probe.failures == 0 and len(probe.latencies) > 20
    assert probe.p99() < 0.1, f"health p99 {probe.p99() * 1000:.0f} ms"


def test_triton_http_client_with_json_inputs_and_no_headers(server: ServerProcess) -> None:
    import numpy as np
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
    prompt = httpclient.InferInput("prompt", [1], "BYTES")
    prompt.set_data_from_numpy(np.array([b"a red fox"], dtype=object), binary_data=False)
    outputs = [httpclient.InferRequestedOutput("images", binary_data=False), httpclient.InferRequestedOutput("seed")]
    parameters = {"height": 64, "width": 64, "num_inference_steps": 2, "seed": 5}
    result = client.infer("sdxl", [prompt], outputs=outputs, parameters=parameters)
    assert result.as_numpy("seed").tolist() == [5]
