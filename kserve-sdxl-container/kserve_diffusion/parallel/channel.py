"""Requests from rank 0 to the followers, through the group's TCPStore: a follower waits there between requests
for as long as it takes (a collective would time out while the server is idle), and notices rank 0 is gone."""

from __future__ import annotations

import os
import pickle
from datetime import timedelta
from typing import Any

POLL = timedelta(seconds=2)  # how often an idle follower checks that rank 0 is still there
STOP = None


class Sender:
    """Rank 0's end: each request under the next number; the one before the previous is forgotten (every
    follower has read it: it took part in that request's collectives)."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.sent = 0

    def send(self, message: Any) -> None:
        """Publish `message` (a request's arguments, or STOP) to every follower."""
        self.sent += 1
        self.store.set(f"request/{self.sent}", pickle.dumps(message))
        if self.sent > 2:
            self.store.delete_key(f"request/{self.sent - 2}")


class Receiver:
    """A follower's end: the requests in order."""

    def __init__(self, store: Any, parent: int) -> None:
        self.store = store
        self.parent = parent
        self.read = 0

    def receive(self) -> Any:
        """The next message; STOP once rank 0 has gone (its store with it, or this process re-parented)."""
        key = f"request/{self.read + 1}"
        while True:
            if os.getppid() != self.parent:
                return STOP
            try:
                self.store.wait([key], POLL)
                break
            except RuntimeError as exc:  # torch raises DistStoreError (a RuntimeError) on timeout and loss alike
                if "timeout" not in str(exc).lower() and "timed out" not in str(exc).lower():
                    return STOP
        self.read += 1
        return pickle.loads(self.store.get(key))  # noqa: S301 - rank 0 of this pod wrote it
