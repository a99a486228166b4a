"""Who is calling: optional API keys (`--api_keys`) on every route but health, readiness and /metrics, and the
caller's identity that jobs belong to (a hash of the bearer token, or the header an auth proxy sets).

Keys are compared as SHA-256 digests with `hmac.compare_digest`, every key each time, so the time taken says
nothing about which key came close. Neither keys nor tokens are ever logged or stored: a job keeps only the
digest of its caller's identity.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable
from typing import Any

import orjson
from kserve.logging import logger

Scope = dict[str, Any]
# Liveness, readiness and metrics answer without a key: probes and Prometheus carry none. So do the playground's
# static files: they hold no data, and the page sends the key the user types with each call it makes.
OPEN_PATHS = re.compile(
    r"^/(|metrics|v2/health/(live|ready)|v2/models/[^/]+(/versions/[^/]+)?/ready|v1/models/[^/:]+|playground(/.*)?)$"
)
OPEN_GRPC_METHODS = ("/ServerLive", "/ServerReady", "/ModelReady")
UNAUTHENTICATED = "missing or unknown API key: send Authorization: Bearer <key> (the server runs with --api_keys)"


def digest(text: str) -> bytes:
    """SHA-256 of `text` (compared and stored instead of the secret itself)."""
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).digest()


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, or None."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


class ApiKeys:
    """The configured keys, as digests."""

    def __init__(self, keys: Iterable[str]) -> None:
        self._digests = [digest(key) for key in keys]

    @property
    def required(self) -> bool:
        """Whether any key is configured (without keys every request is let through)."""
        return bool(self._digests)

    def accepts(self, authorization: str | None) -> bool:
        """Whether the header carries one of the keys; compares against every key in constant time."""
        token = bearer_token(authorization)
        given = digest(token or "")
        matched = False
        for known in self._digests:
            matched |= hmac.compare_digest(given, known)
        return matched and token is not None


def caller_identity(headers: Any, owner_header: str | None) -> str | None:
    """Who the caller is, as a hex digest: --job_owner_header's value when set and sent, else the bearer token;
    None for a caller without either (its jobs are reachable by id alone and never listed)."""
    if owner_header:
        value = headers.get(owner_header)
        if value:
            return "user:" + digest(value).hex()[:32]
    token = bearer_token(headers.get("authorization"))
    return "token:" + digest(token).hex()[:32] if token else None


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers") or []:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


class ApiKeyGuard:
    """ASGI middleware: with --api_keys, a request without one of the keys is a 401 (OpenAI's error shape on
    /openai routes), except the open probe and metrics paths."""

    def __init__(self, app: Any, keys: ApiKeys) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not self.keys.required:
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        if scope.get("method") in ("GET", "HEAD") and OPEN_PATHS.match(path):
            await self.app(scope, receive, send)
            return
        if self.keys.accepts(_header(scope, b"authorization")):
            await self.app(scope, receive, send)
            return
        logger.warning("rejected request (401): missing or unknown API key")
        if path.startswith("/openai/"):
            body = {"error": {"message": UNAUTHENTICATED, "type": "invalid_request_error", "code": "invalid_api_key"}}
        else:
            body = {"error": UNAUTHENTICATED}
        headers = [(b"content-type", b"application/json"), (b"www-authenticate", b'Bearer realm="kserve-diffusion"')]
        await send({"type": "http.response.start", "status": 401, "headers": headers})
        await send({"type": "http.response.body", "body": orjson.dumps(body)})


def grpc_open(method_name: str) -> bool:
    """Whether a gRPC method answers without a key (the health and readiness RPCs)."""
    return method_name.endswith(OPEN_GRPC_METHODS)
