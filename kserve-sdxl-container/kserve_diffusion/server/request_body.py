"""Notice when an HTTP client goes away, so that its queued or running generation stops.

An ASGI middleware for POST requests: it reads the whole body first (the app gets it replayed), then
listens on the connection for `http.disconnect` while the app works, and sets an event that the model
finds through a context variable (the endpoint runs in the same task, so it sees the variable).
"""

from __future__ import annotations

import asyncio
from typing import Any

from ..runtime.control import CLIENT_DISCONNECTED

Scope = dict[str, Any]
Message = dict[str, Any]


class DisconnectWatcher:
    """ASGI middleware: sets CLIENT_DISCONNECTED's event when the client of a POST closes its connection."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        body: list[Message] = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # gone before the request was complete: nothing to answer
            body.append(message)
            if not message.get("more_body", False):
                break
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
