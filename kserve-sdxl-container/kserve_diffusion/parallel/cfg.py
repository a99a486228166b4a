"""CFG parallelism on two ranks: a request's conditional and unconditional passes run at the same time, one on
each rank, and are exchanged before the pipeline combines them.

Families that run two passes a step (Wan, Qwen-Image) call the denoiser twice, conditional first. Rank 0
computes the conditional pass and hands the pipeline a placeholder for the unconditional one; rank 1 hands a
placeholder for the conditional pass and computes the unconditional one meanwhile; at the second call each
fills the other's placeholder in place (the pipeline combines the two only after the second call). Whether a
request runs two passes is learnt from its first step, which runs the conditional pass on both ranks. Families
with batched CFG (SDXL's UNet: one call on [unconditional, conditional]) split the batch: each rank one half."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


def _exchange(mine: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's tensor (same shape on each), in rank order."""
    gathered = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, mine.contiguous())
    return gathered


class TwoPassSplit:
    """The two-pass scheme for one request at a time; `reset` before a request, `step_done` after each step."""

    def __init__(self, rank: int) -> None:
        self.rank = rank
        self.reset()

    def reset(self) -> None:
        """A new request: its first step tells whether it runs two passes."""
        self.step = 0
        self.calls = 0
        self.two_passes: bool | None = None
        self.waiting: torch.Tensor | None = None  # this rank's placeholder for the other rank's pass

    def step_done(self) -> None:
        """The pipeline finished a step."""
        if self.step == 0 and self.two_passes is None:
            self.two_passes = self.calls >= 2
        self.step += 1
        self.calls = 0

    def wrap(self, model: torch.nn.Module) -> None:
        """Route `model`'s calls through the scheme."""
        forward = model.forward

        def split_forward(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            if kwargs.get("return_dict", True) or self.calls > 2:
                return forward(*args, **kwargs)
            if self.step == 0 or not self.two_passes:
                return self._first_step(forward, args, kwargs)
            return self._parallel(forward, args, kwargs)

        model.forward = split_forward

    def _first_step(self, forward: Any, args: Any, kwargs: Any) -> Any:
        if self.calls == 1:  # the conditional pass, on both ranks: its shape is learnt
            output = forward(*args, **kwargs)
            self.shape, self.dtype, self.device = output[0].shape, output[0].dtype, output[0].device
            return output
        mine = (
            forward(*args, **kwargs)[0]
            if self.rank == 1
            else torch.empty(self.shape, dtype=self.dtype, device=self.device)
        )
        return (_exchange(mine)[1],)

    def _parallel(self, forward: Any, args: Any, kwargs: Any) -> Any:
        pass_of_this_rank = self.calls == self.rank + 1  # rank 0: the first call (cond), rank 1: the second
        if self.calls == 1:
            if pass_of_this_rank:
                self.mine = forward(*args, **kwargs)[0]
                return (self.mine,)
            self.waiting = torch.empty(self.shape, dtype=self.dtype, device=self.device)
            return (self.waiting,)
        if pass_of_this_rank:  # rank 1's unconditional pass; rank 0's conditional one arrives in its placeholder
            self.mine = forward(*args, **kwargs)[0]
            theirs = _exchange(self.mine)
            assert self.waiting is not None
            self.waiting.copy_(theirs[0])
            return (self.mine,)
        theirs = _exchange(self.mine)  # rank 0: its conditional pass out, rank 1's unconditional one in
        return (theirs[1],)


def split_batch(model: torch.nn.Module, rank: int) -> None:
    """Batched CFG (SDXL): each of two ranks runs half of every even batch, and the halves are gathered."""
    forward = model.forward

    def half(value: Any, batch: int) -> Any:
        if isinstance(value, torch.Tensor) and value.ndim and value.shape[0] == batch:
            return value.chunk(2)[rank]
        if isinstance(value, dict):
            return {key: half(item, batch) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(half(item, batch) for item in value)
        return value

    def split_forward(sample: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        batch = sample.shape[0]
        if batch % 2 or kwargs.get("return_dict", True):
            return forward(sample, *args, **kwargs)
        mine = forward(half(sample, batch), *half(args, batch), **half(kwargs, batch))[0]
        return (torch.cat(_exchange(mine)),)

    model.forward = split_forward
