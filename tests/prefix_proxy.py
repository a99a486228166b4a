"""A reverse proxy process that serves a server under a path prefix, as an OpenShift Route or an ingress with a
rewrite does: `/PREFIX/x` goes upstream as `/x`, answers (event streams included) are streamed back as they are.

    python tests/prefix_proxy.py PORT /PREFIX http://127.0.0.1:UPSTREAM
"""

from __future__ import annotations

import sys

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "upgrade", "host", "content-length"}


def build(prefix: str, upstream: str) -> Starlette:
    """The proxy's app."""
    client = httpx.AsyncClient(base_url=upstream, timeout=None)

    async def forward(request: Request) -> Response:
        path = request.url.path
        if not (path == prefix or path.startswith(prefix + "/")):
            return PlainTextResponse("not under the prefix", status_code=404)
        inner = path[len(prefix) :] or "/"
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP]
        sent = client.build_request(
            request.method, inner, params=request.query_params, headers=headers, content=await request.body()
        )
        answer = await client.send(sent, stream=True)
        kept = {k: v for k, v in answer.headers.items() if k.lower() not in HOP_BY_HOP}
        return StreamingResponse(
            answer.aiter_raw(), status_code=answer.status_code, headers=kept, background=BackgroundTask(answer.aclose)
        )

    methods = ["GET", "HEAD", "POST", "DELETE", "PUT"]
    return Starlette(routes=[Route("/{path:path}", forward, methods=methods)])


if __name__ == "__main__":
    port, prefix, upstream = int(sys.argv[1]), sys.argv[2].rstrip("/"), sys.argv[3]
    uvicorn.run(build(prefix, upstream), host="127.0.0.1", port=port, log_level="warning")
