"""Test-only launcher: the real server, with a pipeline step callback that raises torch's out-of-memory error
for requests whose id starts with `inject-oom` (as CUDA does when an allocation fails mid-generation), and a Wan
VAE decode that raises it for requests whose id starts with `inject-decode-oom` (as a long 720p video does
after all its steps)."""

from __future__ import annotations

import sys
import threading
from typing import Any

import torch
from diffusers import AutoencoderKLWan
from kserve_diffusion.__main__ import main
from kserve_diffusion.runtime.control import RequestControl

INJECT_PREFIX = "inject-oom"
INJECT_DECODE_PREFIX = "inject-decode-oom"
_on_step = RequestControl.on_step
_decode = AutoencoderKLWan.decode
_current = threading.local()  # the request the accelerator thread is generating


def on_step_that_runs_out_of_memory(
    self: RequestControl, pipeline: Any, step: int, timestep: Any, callback_kwargs: dict[str, Any]
) -> dict[str, Any]:
    """The real step callback, except for the injected requests."""
    _current.request_id = self.request_id
    if self.request_id.startswith(INJECT_PREFIX):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (injected by the test)")
    return _on_step(self, pipeline, step, timestep, callback_kwargs)


def decode_that_runs_out_of_memory(self: AutoencoderKLWan, *args: Any, **kwargs: Any) -> Any:
    """The real Wan VAE decode, except for the injected requests."""
    if getattr(_current, "request_id", "").startswith(INJECT_DECODE_PREFIX):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 30.00 GiB (injected in decode)")
    return _decode(self, *args, **kwargs)


if __name__ == "__main__":
    RequestControl.on_step = on_step_that_runs_out_of_memory  # type: ignore[method-assign]
    AutoencoderKLWan.decode = decode_that_runs_out_of_memory  # type: ignore[method-assign]
    sys.exit(main())
