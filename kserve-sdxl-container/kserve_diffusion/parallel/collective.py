"""Per-step decisions taken by every rank together: one rank stopping alone (cancelled, past its deadline) or
skipping a cached block alone would leave the others waiting in the next collective forever."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from ..errors import ServingError


class StoppedWithRankZero(ServingError):
    """A follower's generation stopped because rank 0's did (cancelled, deadline): nothing to report."""


def any_rank(flag: bool, group: Any) -> bool:
    """Whether `flag` is true on any rank (every rank must call it at the same point)."""
    value = torch.tensor([1 if flag else 0], dtype=torch.int32)
    dist.all_reduce(value, op=dist.ReduceOp.MAX, group=group)
    return bool(value.item())


class CollectiveObserver:
    """A StepObserver for one rank: rank 0 wraps the request's control; the followers have none. After each
    step every rank learns whether any must stop, and all stop at that same step."""

    def __init__(self, control: Any | None, group: Any, passes: Any | None = None) -> None:
        self.control = control
        self.group = group
        self.passes = passes  # CFG parallelism's two-pass scheme, told of each step
        self.stopped_together = False  # every rank stopped at the same step: the group is still in step

    def on_step(self, pipeline: Any, step: int, timestep: Any, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
        """diffusers' callback_on_step_end, on every rank."""
        stop: Exception | None = None
        if self.control is not None:
            try:
                callback_kwargs = self.control.on_step(pipeline, step, timestep, callback_kwargs)
            except Exception as exc:  # noqa: BLE001 - raised below, once every rank knows
                stop = exc
        if any_rank(stop is not None, self.group):
            self.stopped_together = True
            raise stop or StoppedWithRankZero(f"rank 0 stopped after step {step + 1}")
        if self.passes is not None:
            self.passes.step_done()
        return callback_kwargs

    def cache_skipped(self, skipped: int, total: int) -> None:
        """What --cache skipped (rank 0 reports it)."""
        if self.control is not None:
            self.control.cache_skipped(skipped, total)


def share_cache_decisions(group: Any) -> None:
    """Make First-Block-Cache's skip decision collective in this process (every FBC hook here belongs to the split
    model, and hooks made again for a new step count get it too): the remaining blocks run on every rank when any
    rank's shard changed more than the threshold, since each rank sees only its part of the sequence."""
    from diffusers.hooks.first_block_cache import FBCHeadBlockHook

    local = FBCHeadBlockHook._should_compute_remaining_blocks  # noqa: SLF001 - the one decision to share
    if getattr(local, "collective", False):
        return

    def together(hook: FBCHeadBlockHook, residual: torch.Tensor) -> bool:
        return any_rank(local(hook, residual), group)

    together.collective = True  # type: ignore[attr-defined]
    FBCHeadBlockHook._should_compute_remaining_blocks = together  # noqa: SLF001
