"""A deadline for request heads: a client that opens a connection and sends its headers slowly (slowloris),
or not at all, is disconnected after `--header_timeout` seconds.

uvicorn has no such timeout (its keep-alive timer only runs between requests), and KServe builds the
uvicorn configuration itself, so this subclass of uvicorn's httptools protocol is put in place of
uvicorn's "auto" protocol for this process (`install`). Request bodies are bounded by the
`request_body` middleware.
"""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn.config
from kserve.logging import logger
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class HeaderTimeoutProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, closing connections whose request head does not arrive in time."""

    header_timeout = 10.0  # set by install()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None

    def _arm(self) -> None:
        self._disarm()
        self._head_timer = self.loop.call_later(self.header_timeout, self._head_timed_out)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            logger.warning("closed a connection whose request headers did not arrive within %gs", self.header_timeout)
            self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """A new connection: its first request head must arrive within the timeout."""
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        """The first byte of a request (also a later one on a kept-alive connection): its head is timed."""
        super().on_message_begin()
        if self._head_timer is None:
            self._arm()

    def on_headers_complete(self) -> None:
        """The head arrived in time."""
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        """The connection closed: nothing to time any more."""
        self._disarm()
        super().connection_lost(exc)


def install(header_timeout: float) -> None:
    """Make uvicorn's default ("auto") HTTP protocol the one with the head deadline, in this process."""
    HeaderTimeoutProtocol.header_timeout = header_timeout
    uvicorn.config.HTTP_PROTOCOLS["auto"] = f"{__name__}:HeaderTimeoutProtocol"
