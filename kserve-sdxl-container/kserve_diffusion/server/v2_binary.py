"""Raw image files in v2 REST binary tensors (tritonclient's default) for KServe 0.21.

KServe parses the binary tensor data extension by decoding every BYTES element as UTF-8 text, so a
PNG or JPEG sent as raw bytes fails there with a 500 that echoes the whole file. This ASGI
middleware re-encodes the elements of the image-carrying BYTES tensors as base64 text before KServe
reads the body; `media.decode_inline` accepts base64, so the model sees the same file. Every other
request passes through untouched.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Awaitable, Callable, Collection, MutableMapping
from typing import Any

import orjson
from kserve.constants.constants import INFERENCE_CONTENT_LENGTH_HEADER

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_LENGTH = struct.Struct("<I")  # each BYTES element: a little-endian uint32 length, then the bytes
_HEADER = INFERENCE_CONTENT_LENGTH_HEADER.encode()


def _base64_elements(data: bytes) -> bytes:
    """A serialized BYTES tensor with every element replaced by its base64 text."""
    out, offset = bytearray(), 0
    while offset < len(data):
        (size,) = _LENGTH.unpack_from(data, offset)
        element = base64.b64encode(data[offset + _LENGTH.size : offset + _LENGTH.size + size])
        out += _LENGTH.pack(len(element)) + element
        offset += _LENGTH.size + size
    return bytes(out)


def rewrite_body(body: bytes, header_length: int, tensors: Collection[str]) -> tuple[bytes, int] | None:
    """(new body, new JSON header length) with `tensors` re-encoded; None when nothing needs to change."""
    header = orjson.loads(body[:header_length])
    offset, chunks, changed = header_length, [], False
    for tensor in header.get("inputs", []):
        parameters = tensor.get("parameters") or {}
        size = parameters.get("binary_data_size")
        if size is None:
            continue
        chunk = body[offset : offset + size]
        offset += size
        if tensor.get("name") in tensors and tensor.get("datatype") == "BYTES":
            chunk = _base64_elements(chunk)
            parameters["binary_data_size"] = len(chunk)
            changed = True
        chunks.append(chunk)
    if not changed:
        return None
    new_header = orjson.dumps(header)
    return new_header + b"".join(chunks) + body[offset:], len(new_header)


class Base64BinaryInputs:
    """ASGI middleware: base64-encode the named BYTES tensors of v2 binary-extension requests."""

    def __init__(self, app: ASGIApp, tensors: Collection[str]):
        self.app = app
        self.tensors = frozenset(tensors)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Rewrite a v2 binary infer body when it carries one of the tensors; pass everything else on."""
        headers = dict(scope.get("headers") or []) if scope["type"] == "http" else {}
        if scope.get("method") != "POST" or _HEADER not in headers or not scope["path"].endswith("/infer"):
            await self.app(scope, receive, send)
            return
        body = bytearray()
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        try:
            rewritten = rewrite_body(bytes(body), int(headers[_HEADER]), self.tensors)
        except (ValueError, struct.error, orjson.JSONDecodeError):
            rewritten = None  # malformed: KServe answers it as it would have
        if rewritten is not None:
            body, header_length = bytearray(rewritten[0]), rewritten[1]
            replaced = {_HEADER: str(header_length).encode(), b"content-length": str(len(body)).encode()}
            scope = {**scope, "headers": [(k, replaced.get(k, v)) for k, v in scope["headers"]]}
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if sent:  # after the body, wait for the disconnect as a real receive would
                return await receive()
            sent = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send)
