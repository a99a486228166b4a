"""The ranks' process group: gloo on the CPU (tests), NCCL for tensors and a gloo group for control on GPUs; and
diffusers' context parallelism switched on in each denoiser."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from unittest import mock

import torch
import torch.distributed as dist

from ..errors import ConfigError
from .plan import ParallelPlan

STARTUP_SECONDS = 600  # how long rank 0 waits for its followers to start (each loads torch, then the model)


@dataclass(frozen=True)
class Group:
    """This process's place in the group, and the CPU group that carries requests and per-step decisions."""

    rank: int
    world_size: int
    control: Any  # a torch.distributed ProcessGroup (gloo)
    store: Any  # the TCPStore rank 0 hosts: requests wait there, where an idle wait has no collective timeout


def open_group(
    rank: int, world_size: int, address: str, port: int, device: str, timeout: float, check: Callable[[], None]
) -> Group:
    """Join the group (rank 0 hosts its store and waits for every follower, `check` raising when one has exited);
    every collective then gives up after `timeout` seconds."""
    store = dist.TCPStore(
        address,
        port,
        world_size,
        is_master=rank == 0,
        timeout=timedelta(seconds=STARTUP_SECONDS),
        wait_for_workers=False,
    )
    if rank:
        store.set(f"joined/{rank}", "1")
    else:
        _wait_for_followers(store, world_size, check)
    wait = timedelta(seconds=timeout)
    if device == "cpu":
        dist.init_process_group("gloo", store=store, rank=rank, world_size=world_size, timeout=wait)
        return Group(rank, world_size, dist.group.WORLD, store)
    torch.cuda.set_device(rank)  # one GPU a rank: "cuda" below means this one
    dist.init_process_group(
        "nccl", store=store, rank=rank, world_size=world_size, timeout=wait, device_id=torch.device("cuda", rank)
    )
    return Group(rank, world_size, dist.new_group(backend="gloo", timeout=wait), store)


def _wait_for_followers(store: Any, world_size: int, check: Callable[[], None]) -> None:
    """Until every follower has joined: they load torch and diffusers first, which takes a while on a busy node."""
    joined = [f"joined/{rank}" for rank in range(1, world_size)]
    deadline = time.monotonic() + STARTUP_SECONDS
    while True:
        try:
            store.wait(joined, timedelta(seconds=1))
            return
        except RuntimeError:  # DistStoreError: not all of them yet
            check()
            if time.monotonic() > deadline:
                raise ConfigError(f"--ulysses_degree: the followers did not join in {STARTUP_SECONDS} s") from None


def close_group() -> None:
    """Leave the group (a no-op when none is open)."""
    if dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def _accelerator_count_for_cpu(device: str) -> Iterator[None]:
    # diffusers 0.42.1 places each rank on `rank % torch.accelerator.device_count()`, which is a division by zero
    # without an accelerator. On the CPU path only (gloo, the tests), that count reads 1: every rank is "cpu".
    if device != "cpu":
        yield
        return
    with mock.patch.object(torch.accelerator, "device_count", return_value=1):
        yield


def _pad_text(degree: int) -> Callable[..., Any]:
    """A forward pre-hook: the prompt's tokens padded to a multiple of `degree`, the padding masked out. Qwen-Image's
    plan splits the text sequence too, and a prompt's token count is whatever it is."""

    def pad(module: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
        text = kwargs.get("encoder_hidden_states")
        if text is None or text.shape[1] % degree == 0:
            return args, kwargs
        missing = degree - text.shape[1] % degree
        mask = kwargs.get("encoder_hidden_states_mask")
        if mask is None:
            mask = torch.ones(text.shape[:2], dtype=torch.bool, device=text.device)
        padded_mask = torch.cat([mask.bool(), mask.new_zeros((mask.shape[0], missing), dtype=torch.bool)], dim=1)
        padded = torch.cat([text, text.new_zeros((text.shape[0], missing, text.shape[2]))], dim=1)
        return args, {**kwargs, "encoder_hidden_states": padded, "encoder_hidden_states_mask": padded_mask}

    return pad


def enable(denoisers: Iterable[torch.nn.Module], plan: ParallelPlan, device: str) -> None:
    """Switch diffusers' context parallelism (Ulysses x Ring) on in each denoiser."""
    from diffusers import ContextParallelConfig

    for model in denoisers:
        splits_text = any(
            isinstance(part, dict) and "encoder_hidden_states_mask" in part for part in model._cp_plan.values()
        )  # noqa: SLF001
        if splits_text:  # registered first: it runs before the plan's own hooks shard the inputs
            model.register_forward_pre_hook(_pad_text(plan.ulysses * plan.ring), with_kwargs=True)
        with _accelerator_count_for_cpu(device):
            model.enable_parallelism(config=ContextParallelConfig(ulysses_degree=plan.ulysses, ring_degree=plan.ring))
