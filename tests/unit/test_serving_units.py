"""Serving units: error statuses and request control, without a server."""

from __future__ import annotations

import grpc
import pytest
from kserve_diffusion.errors import ClientGone, DeadlineExceeded, OutOfMemory, ServerBusy, ShuttingDown
from kserve_diffusion.runtime.control import RequestControl


def test_serving_errors_carry_their_http_and_grpc_status() -> None:
    busy = ServerBusy("full", retry_after=3)
    assert (busy.http_status, busy.status_code, busy.headers) == (
        503,
        grpc.StatusCode.UNAVAILABLE,
        {"Retry-After": "3"},
    )
    assert ShuttingDown("bye").status_code == grpc.StatusCode.UNAVAILABLE
    assert (DeadlineExceeded("late").http_status, DeadlineExceeded("late").status_code) == (
        504,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    )
    assert (OutOfMemory("big").http_status, OutOfMemory("big").status_code) == (507, grpc.StatusCode.RESOURCE_EXHAUSTED)


def test_request_control_stops_at_a_step() -> None:
    now = [0.0]
    control = RequestControl("r1", timeout=10, clock=lambda: now[0])
    control.check("before")  # in time: nothing
    now[0] = 10.5
    with pytest.raises(DeadlineExceeded, match="the request's 10 s timeout passed after step 3 of 7"):
        control.check("after step 3 of 7")
    fresh = RequestControl("r2", timeout=10)
    fresh.cancel(ClientGone, "the client disconnected")
    fresh.cancel(ShuttingDown, "later reasons do not replace the first")
    with pytest.raises(ClientGone, match="the client disconnected"):
        fresh.on_step(None, 0, 999, {})
