"""Request bodies: bounded in size and time, then watched for a client that leaves.

An ASGI middleware, outermost. A body larger than `--max_body_bytes` is a 413: before any of it is
read when Content-Length says so, else as soon as the count passes the limit. A body that takes more
than `--body_timeout` seconds to arrive (a half-sent body, a slow client) is a 408. Either way the
connection is closed. A POST body is read whole first (the app gets it replayed), then the
connection is watched for `http.disconnect` while the app works, and an event the generation service
finds through a context variable is set when the client goes (its queued or running generation stops).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi.responses import JSONResponse
from kserve.logging import logger

from ..runtime.control import CLIENT_DISCONNECTED

Scope = dict[str, Any]
Message = dict[str, Any]
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class BodyRefused(Exception):
    """The body is too large or too slow: the status and message to answer with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class RequestBodyGuard:
    """ASGI middleware: size and time limits on request bodies, and CLIENT_DISCONNECTED for POSTs."""

    def __init__(self, app: Any, max_bytes: int, timeout: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout = timeout

    def _declared_length(self, scope: Scope) -> int | None:
        for key, value in scope.get("headers") or []:
            if key == b"content-length" and value.isdigit():
                return int(value)
        return None

    async def _read(self, receive: Any) -> list[Message] | None:
        """The body's messages (None when the client left first); BodyRefused past a limit."""
        messages: list[Message] = []
        size, deadline = 0, time.monotonic() + self.timeout
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(deadline - time.monotonic(), 0))
            except TimeoutError:
                raise BodyRefused(
                    408, f"the request body did not arrive within {self.timeout:g} s (--body_timeout)"
                ) from None
            if message["type"] == "http.disconnect":
                return None
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                raise BodyRefused(
                    413, f"the request body is over the limit of {self.max_bytes} bytes (--max_body_bytes)"
                )
            messages.append(message)
            if not message.get("more_body", False):
                return messages

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] not in BODY_METHODS:
            await self.app(scope, receive, send)
            return
        try:
            declared = self._declared_length(scope)
            if declared is not None and declared > self.max_bytes:
                raise BodyRefused(
                    413,
                    f"the request body ({declared} bytes) is over the limit of {self.max_bytes} bytes "
                    "(--max_body_bytes)",
                )
            body = await self._read(receive)
        except BodyRefused as refused:
            logger.warning("rejected request (%d): %s", refused.status, refused)
            answer = JSONResponse({"error": str(refused)}, status_code=refused.status, headers={"connection": "close"})
            await answer(scope, receive, send)
            return
        if body is None:
            return  # gone before the request was complete: nothing to answer
        if scope["method"] != "POST":
            await self.app(scope, _replaying(body, receive), send)
            return
        gone = asyncio.Event()

        async def replay() -> Message:
            if body:
                return body.pop(0)
            await gone.wait()
            return {"type": "http.disconnect"}

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()

        watcher = asyncio.ensure_future(watch())
        token = CLIENT_DISCONNECTED.set(gone)
        try:
            await self.app(scope, replay, send)
        finally:
            CLIENT_DISCONNECTED.reset(token)
            watcher.cancel()


def _replaying(body: list[Message], receive: Any) -> Any:
    async def replay() -> Message:
        return body.pop(0) if body else await receive()

    return replay
