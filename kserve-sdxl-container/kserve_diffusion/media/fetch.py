"""Fetching image URLs without letting a request turn the server against its own network.

Only http(s). Every connection, redirects included, goes through a resolver that refuses private,
loopback, link-local and other non-public addresses (unless the operator allows private ones), and
the connection is made to exactly the address that was checked, so DNS cannot change the answer in
between. Bodies are capped while streaming, the whole fetch has one deadline, redirects are counted.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from ..redact import loggable

FETCH_SCHEMES = ("http", "https")
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# Cloud instance-metadata endpoints (AWS/GCP/Azure/OpenStack, AWS IPv6, ECS, Alibaba): never an image
# source, so they stay refused even when private addresses are allowed.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "169.254.170.2", "100.100.100.200")
)
_CHUNK = 64 * 1024
MAX_REDIRECTS = 3


@dataclass(frozen=True)
class FetchPolicy:
    """What an image download may do (from the server configuration; the settings hold the defaults)."""

    allow_private: bool
    max_bytes: int
    timeout: float
    max_redirects: int = MAX_REDIRECTS  # not a setting: more hops than this is never an image link


class FetchError(Exception):
    """A download that was refused or failed; the message says why, for the client."""


def safe_url_text(url: str) -> str:
    """`url` without credentials, query or fragment (pre-signed URLs carry secrets there), for messages."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<unparsable URL>"
    shown = f"{parts.scheme}://{host}{port}{parts.path}"
    return shown if len(shown) <= 120 else shown[:117] + "..."


def address_problem(address: str, allow_private: bool) -> str | None:
    """Why `address` may not be fetched from ('127.0.0.1, a loopback address'), or None when it may."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip in METADATA_ADDRESSES:
        return f"{ip}, a cloud metadata address"
    if allow_private or ip.is_global:
        return None
    for attribute, words in (  # most specific first: loopback and 0.0.0.0 count as private too
        ("is_unspecified", "an unspecified"),
        ("is_loopback", "a loopback"),
        ("is_link_local", "a link-local"),
        ("is_private", "a private"),
        ("is_multicast", "a multicast"),
        ("is_reserved", "a reserved"),
    ):
        if getattr(ip, attribute):
            return f"{ip}, {words} address"
    return f"{ip}, not a public address"


class _RefusedAddress(Exception):
    pass


class _CheckedResolver(AbstractResolver):
    """Resolves with the system resolver, then refuses the host if any address it maps to is refused."""

    def __init__(self, allow_private: bool):
        self._inner = aiohttp.ThreadedResolver()
        self._allow_private = allow_private

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[Any]:
        results: list[ResolveResult] = await self._inner.resolve(host, port, family)
        for result in results:
            problem = address_problem(result["host"], self._allow_private)
            if problem:
                raise _RefusedAddress(f"{host} resolves to {problem}")
        return results

    async def close(self) -> None:
        await self._inner.close()


def _check_hop(url: str, allow_private: bool) -> None:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - parses the port: a bad one raises here, not inside the download
    except ValueError:
        raise FetchError("is not a valid URL (unbalanced brackets or a bad port)") from None
    if not parts.scheme:
        raise FetchError("not a URL: local paths are never read; use http(s) or a data URL")
    if parts.scheme.lower() not in FETCH_SCHEMES:
        raise FetchError(f"the {loggable(parts.scheme)}: scheme is refused (only http, https and data)")
    if not parts.hostname:
        raise FetchError(f"{safe_url_text(url)} has no host")
    try:
        ipaddress.ip_address(parts.hostname.split("%", 1)[0])
    except ValueError:
        return  # a name: the resolver checks what it resolves to
    problem = address_problem(parts.hostname, allow_private)  # literals never reach the resolver
    if problem:
        raise FetchError(f"refused: the address is {problem}")


async def _read_capped(response: aiohttp.ClientResponse, max_bytes: int) -> bytes:
    if response.content_length is not None and response.content_length > max_bytes:
        raise FetchError(f"the image is {response.content_length} bytes, more than the limit of {max_bytes}")
    body = bytearray()
    async for chunk in response.content.iter_chunked(_CHUNK):
        body += chunk
        if len(body) > max_bytes:
            raise FetchError(f"the image is larger than the limit of {max_bytes} bytes (stopped reading)")
    return bytes(body)


async def _follow(session: aiohttp.ClientSession, url: str, policy: FetchPolicy) -> bytes:
    for _ in range(policy.max_redirects + 1):
        _check_hop(url, policy.allow_private)
        async with session.get(url, allow_redirects=False) as response:
            if response.status in REDIRECT_STATUSES:
                location = response.headers.get("Location")
                if not location:
                    raise FetchError(f"{safe_url_text(url)} answered {response.status} without a Location")
                try:
                    url = urljoin(url, location)
                except ValueError:
                    raise FetchError(f"{safe_url_text(url)} redirected to an invalid URL") from None
                continue
            if response.status != 200:
                reason = f" {response.reason}" if response.reason else ""
                raise FetchError(f"{safe_url_text(url)} answered HTTP {response.status}{reason}")
            return await _read_capped(response, policy.max_bytes)
    raise FetchError(f"more than {policy.max_redirects} redirects")


async def fetch(url: str, policy: FetchPolicy) -> bytes:
    """The body of `url` under `policy`; FetchError with a client-facing reason otherwise."""
    connector = aiohttp.TCPConnector(resolver=_CheckedResolver(policy.allow_private), use_dns_cache=False)
    session = aiohttp.ClientSession(
        connector=connector,
        trust_env=False,  # no proxies from the environment: the address check must see the real peer
        auto_decompress=False,  # images are compressed already; a gzip body could be a bomb
        headers={"Accept": "image/png, image/jpeg, image/webp", "Accept-Encoding": "identity"},
    )
    try:
        async with session:
            return await asyncio.wait_for(_follow(session, url, policy), policy.timeout)
    except asyncio.TimeoutError:  # noqa: UP041 - not the builtin TimeoutError on Python 3.10
        raise FetchError(f"{safe_url_text(url)} did not finish downloading within {policy.timeout:g} s") from None
    except _RefusedAddress as exc:
        raise FetchError(f"refused: {exc}") from None
    except aiohttp.ClientConnectorDNSError:
        raise FetchError(f"could not resolve the host of {safe_url_text(url)}") from None
    except aiohttp.ClientConnectorError as exc:
        reason = exc.os_error.strerror or exc.os_error
        raise FetchError(f"could not connect to {safe_url_text(url)} ({reason})") from None
    except aiohttp.InvalidURL:
        raise FetchError(f"{safe_url_text(url)} is not a valid URL") from None
    except aiohttp.ClientError as exc:
        raise FetchError(f"downloading {safe_url_text(url)} failed ({type(exc).__name__})") from None
