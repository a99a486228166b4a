"""The playground page (issue 31): its static files at /playground/, and a browser opening / sent there while
probes and clients asking / for anything else keep KServe's JSON liveness answer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

PAGE_FILES = Path(__file__).with_name("playground")  # plain HTML, CSS and JavaScript modules: no build step
Scope = dict[str, Any]


def wants_html(scope: Scope) -> bool:
    """Whether the request's Accept header asks for a page (a browser's navigation), not JSON."""
    for key, value in scope.get("headers") or []:
        if key.lower() == b"accept":
            return b"text/html" in value.lower()
    return False


class BrowserToPlayground:
    """ASGI middleware: `GET /` asking for text/html answers 302 to `playground/` (relative, so a path prefix in
    front of the server is kept)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope.get("path") == "/" and scope.get("method") == "GET" and wants_html(scope):
            await RedirectResponse("playground/", status_code=302)(scope, receive, send)
            return
        await self.app(scope, receive, send)


def install(app: FastAPI) -> None:
    """Serve the page: /playground/ (and /playground sent there), and a browser's / redirected to it."""

    @app.get("/playground", include_in_schema=False)
    async def playground_without_slash() -> RedirectResponse:
        return RedirectResponse("playground/", status_code=302)

    app.mount("/playground/", StaticFiles(directory=PAGE_FILES, html=True), name="playground")
    app.add_middleware(BrowserToPlayground)
