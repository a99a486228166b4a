"""x-request-id, made safe before anything logs it: KServe's own latency line writes the header as it came.

A request id that is not a plain token of up to 128 characters (tabs, newlines, 10 KB of text) is
replaced by a fresh one, so it can neither forge a log line nor flood the log.
"""

from __future__ import annotations

from typing import Any

from kserve.logging import logger

from ..redact import request_id

_HEADER = b"x-request-id"


class RequestIdHeader:
    """ASGI middleware: replace an unusable x-request-id header with a fresh id."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = scope.get("headers") or []
            given = [value for key, value in headers if key == _HEADER]
            if given:
                text = given[0].decode("latin-1")
                safe = request_id(text)
                if safe != text or len(given) > 1:
                    logger.warning("replaced an unusable x-request-id (%d characters) by %s", len(text), safe)
                    kept = [(key, value) for key, value in headers if key != _HEADER]
                    scope = {**scope, "headers": [*kept, (_HEADER, safe.encode())]}
        await self.app(scope, receive, send)
