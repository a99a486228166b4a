"""v2 REST requests checked before KServe parses them: binary framing, JSON without headers, raw image files.

KServe 0.21 parses the binary tensor data extension (`Inference-Header-Content-Length`) trustingly: a
header that is not an object, a `binary_data_size` that is not a count, a tensor whose bytes do not
match its shape, or a BYTES element whose length prefix runs past the data ends in a 500; it decodes
every BYTES element as UTF-8, so a raw PNG fails too. This ASGI middleware checks the whole framing
first (a 400 naming the problem otherwise), refuses text tensors that are not UTF-8 (without echoing
them), and re-encodes the image-carrying BYTES tensors as base64 text, which `media.decode_inline`
accepts. A body without that header is JSON (what Triton's own client sends without headers), and
is marked so for KServe.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Awaitable, Callable, Collection, MutableMapping
from typing import Any

import orjson
from fastapi.responses import JSONResponse
from kserve.constants.constants import INFERENCE_CONTENT_LENGTH_HEADER
from kserve.logging import logger

from ..api.request import FIELD_KINDS, shown
from ..errors import RequestError
from .v2_inputs import BYTES_LENGTH, NUMPY_TYPES, split_bytes_elements

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_HEADER = INFERENCE_CONTENT_LENGTH_HEADER.encode()
_JSON = b"application/json"
DATATYPES = frozenset({*NUMPY_TYPES, "BYTES"})


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _tensor_bytes(tensor: dict[str, Any], chunk: bytes, name: str, files: Collection[str]) -> bytes:
    """The checked bytes of one binary tensor: re-encoded as base64 elements for an image field."""
    shape, datatype = tensor["shape"], tensor["datatype"]
    count = math.prod(shape)
    if datatype != "BYTES":
        expected = count * NUMPY_TYPES[datatype].itemsize
        if len(chunk) != expected:
            raise RequestError(name, f"a {datatype} tensor of shape {shape} takes {expected} bytes, got {len(chunk)}")
        return chunk
    elements = split_bytes_elements(chunk, name)
    if len(elements) != count:
        raise RequestError(name, f"shape {shape} needs {count} BYTES element(s), got {len(elements)}")
    if name in files:
        encoded = [base64.b64encode(element) for element in elements]
        return b"".join(BYTES_LENGTH.pack(len(element)) + element for element in encoded)
    if FIELD_KINDS.get(name) == "string":
        for element in elements:
            try:
                element.decode("utf-8")
            except UnicodeDecodeError:
                raise RequestError(name, "BYTES data is not UTF-8 text") from None
    return chunk


def _check_tensor(tensor: Any, index: int) -> str:
    """The name of a well-formed input description; RequestError otherwise."""
    if not isinstance(tensor, dict):
        raise RequestError(f"inputs[{index}]", f"must be an object, got {shown(tensor)}")
    name = tensor.get("name")
    if not isinstance(name, str):
        raise RequestError(f"inputs[{index}].name", f"must be a string, got {shown(name)}")
    shown_name = name if len(name) <= 64 and name.isprintable() else shown(name)
    if tensor.get("datatype") not in DATATYPES:
        raise RequestError(
            shown_name, f"datatype must be one of {', '.join(sorted(DATATYPES))}, got {shown(tensor.get('datatype'))}"
        )
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(_count(side) for side in shape):
        raise RequestError(shown_name, f"shape must be a list of sizes, got {shown(shape)}")
    parameters = tensor.get("parameters")
    if parameters is not None and not isinstance(parameters, dict):
        raise RequestError(shown_name, f"parameters must be an object, got {shown(parameters)}")
    return shown_name


def rewrite_body(body: bytes, header_length_text: str, files: Collection[str]) -> tuple[bytes, int]:
    """(new body, new JSON header length) of a binary v2 request, checked; RequestError names what is wrong."""
    if not header_length_text.isdigit() or not 0 < int(header_length_text) <= len(body):
        raise RequestError(
            INFERENCE_CONTENT_LENGTH_HEADER,
            f"must be the JSON header's length in bytes, 1 to {len(body)} (the body's size), "
            f"got {shown(header_length_text)}",
        )
    header_length = int(header_length_text)
    try:
        header = orjson.loads(body[:header_length])
    except orjson.JSONDecodeError as exc:
        raise RequestError("body", f"the JSON header is malformed: {exc}") from None
    if not isinstance(header, dict):
        raise RequestError("body", f"the JSON header must be an object, got {shown(header)}")
    inputs = header.get("inputs")
    if not isinstance(inputs, list):
        raise RequestError("inputs", f"must be a list of tensors, got {shown(inputs)}")
    if not isinstance(header.get("parameters", {}), dict):
        raise RequestError("parameters", f"must be an object, got {shown(header.get('parameters'))}")
    outputs = header.get("outputs", [])
    if not isinstance(outputs, list) or not all(
        isinstance(o, dict) and isinstance(o.get("name"), str) for o in outputs
    ):
        raise RequestError("outputs", f"must be a list of objects with a name, got {shown(outputs)}")
    offset, chunks = header_length, []
    for index, tensor in enumerate(inputs):
        name = _check_tensor(tensor, index)
        parameters = tensor.get("parameters") or {}
        if "binary_data_size" not in parameters:
            if "data" not in tensor:
                raise RequestError(name, "has neither data nor parameters.binary_data_size")
            continue
        size = parameters["binary_data_size"]
        if not _count(size):
            raise RequestError(name, f"binary_data_size must be a count of bytes, got {shown(size)}")
        if size > len(body) - offset:
            raise RequestError(name, f"binary_data_size {size} runs past the body ({len(body) - offset} bytes left)")
        chunk = _tensor_bytes(tensor, body[offset : offset + size], name, files)
        parameters["binary_data_size"] = len(chunk)
        chunks.append(chunk)
        offset += size
    if offset != len(body):
        raise RequestError("body", f"{len(body) - offset} bytes after the last binary tensor")
    new_header = orjson.dumps(header)
    return new_header + b"".join(chunks), len(new_header)


class V2RequestGuard:
    """ASGI middleware for `POST .../infer`: check and rewrite binary requests, mark header-less JSON."""

    def __init__(self, app: ASGIApp, files: Collection[str]):
        self.app = app
        self.files = frozenset(files)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass everything but v2 infer requests through untouched."""
        if scope["type"] != "http" or scope.get("method") != "POST" or not scope["path"].endswith("/infer"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        if _HEADER not in headers:
            if headers.get(b"content-type", b"").split(b";")[0].strip() != _JSON:
                # No binary header: the body is JSON (Triton's client sends no Content-Type with JSON inputs).
                kept = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
                scope = {**scope, "headers": [*kept, (b"content-type", _JSON)]}
            await self.app(scope, receive, send)
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        try:
            rewritten, header_length = rewrite_body(bytes(body), headers[_HEADER].decode("latin-1"), self.files)
        except RequestError as exc:
            logger.warning("rejected request (400): %s", exc)
            await JSONResponse(status_code=400, content={"error": str(exc)})(scope, receive, send)
            return
        replaced = {_HEADER: str(header_length).encode(), b"content-length": str(len(rewritten)).encode()}
        scope = {**scope, "headers": [(k, replaced.get(k, v)) for k, v in scope["headers"]]}
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if sent:  # after the body, wait for the disconnect as a real receive would
                return await receive()
            sent = True
            return {"type": "http.request", "body": rewritten, "more_body": False}

        await self.app(scope, replay, send)
