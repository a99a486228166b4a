"""Test-only launcher: the real server, with a pipeline step callback that raises torch's out-of-memory error
for requests whose id starts with `inject-oom` (as CUDA does when an allocation fails mid-generation)."""

from __future__ import annotations

import sys
from typing import Any

import torch
from kserve_diffusion.__main__ import main
from kserve_diffusion.runtime.control import RequestControl

INJECT_PREFIX = "inject-oom"
_on_step = RequestControl.on_step


def on_step_that_runs_out_of_memory(
    self: RequestControl, pipeline: Any, step: int, timestep: Any, callback_kwargs: dict[str, Any]
) -> dict[str, Any]:
    """The real step callback, except for the injected requests."""
    if self.request_id.startswith(INJECT_PREFIX):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (injected by the test)")
    return _on_step(self, pipeline, step, timestep, callback_kwargs)


if __name__ == "__main__":
    RequestControl.on_step = on_step_that_runs_out_of_memory  # type: ignore[method-assign]
    sys.exit(main())
