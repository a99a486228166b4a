"""Rank 0's side: start the followers, join the group, load and split the model, and run each request on every
rank (its resolved arguments sent to all; only rank 0's output is decoded into the answer)."""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.distributed as dist
from diffusers import DiffusionPipeline, UNet2DConditionModel

from ..config import ServerConfig
from ..errors import ConfigError, RankLost
from ..pipelines.base import Family, Runner
from .cfg import TwoPassSplit, split_batch
from .channel import STOP, Sender
from .collective import CollectiveObserver, share_cache_decisions
from .group import Group, close_group, enable, open_group
from .plan import ParallelPlan, check_devices, check_models

logger = logging.getLogger("kserve.diffusion")
RANK_ENV = "KSERVE_DIFFUSION_RANK"
WORLD_ENV = "KSERVE_DIFFUSION_WORLD_SIZE"
PORT_ENV = "KSERVE_DIFFUSION_GROUP_PORT"
ADDRESS = "127.0.0.1"  # every rank is in this pod
DENOISERS = ("transformer", "transformer_2")
WATCH_SECONDS = 1.0  # how often rank 0 looks for a follower that exited  # Wan2.2 A14B has two experts


def pipelines_of(runner: Any, depth: int = 6) -> Iterator[DiffusionPipeline]:
    """Every pipeline a loaded runner holds (a combined runner holds runners)."""
    seen: set[int] = set()

    def walk(value: Any, left: int) -> Iterator[DiffusionPipeline]:
        if id(value) in seen or left < 0:
            return
        seen.add(id(value))
        if isinstance(value, DiffusionPipeline):
            yield value
        elif isinstance(value, dict):
            for item in value.values():
                yield from walk(item, left - 1)
        elif type(value).__module__.startswith("kserve_diffusion.pipelines"):
            for item in vars(value).values():
                yield from walk(item, left - 1)

    yield from walk(runner, depth)


def denoisers_of(runner: Any, family: str, plan: ParallelPlan) -> list[Any]:
    """The denoisers to split (each once); for context parallelism a UNet is refused: it has no plan for it."""
    found: dict[int, Any] = {}
    for pipeline in pipelines_of(runner):
        unet = getattr(pipeline, "unet", None)
        if unet is not None and plan.context:
            raise ConfigError(f"{plan.flag}: the {family} family's UNet has no context-parallel plan")
        if unet is not None:
            found[id(unet)] = unet
        for name in DENOISERS:
            model = getattr(pipeline, name, None)
            if model is not None:
                found[id(model)] = model
    return list(found.values())


def load_split(
    family: Family, config: ServerConfig, plan: ParallelPlan, group: Group
) -> tuple[Runner, TwoPassSplit | None]:
    """Load the family on this rank, then split its denoisers: context parallelism, or CFG parallelism (whose
    two-pass scheme is returned: it is told of each request and step)."""
    runner = family.load(config)
    denoisers = denoisers_of(runner, family.name, plan)
    check_models(plan, denoisers, family.name)
    if plan.context:
        enable(denoisers, plan, config.device)
        share_cache_decisions(group.control)
        return runner, None
    passes = TwoPassSplit(group.rank)
    for model in denoisers:
        if isinstance(model, UNet2DConditionModel):
            split_batch(model, group.rank)
        else:
            passes.wrap(model)
    return runner, passes


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind((ADDRESS, 0))
        return probe.getsockname()[1]


class ParallelRunner:
    """The runner rank 0 serves with: checks and LoRA choices are its own; each generation runs on every rank.
    A watcher thread notices a follower that died, and a generation that fails in a collective (a rank died or
    hung past --parallel_timeout) marks the group lost: readiness turns off, the group (followers, process group,
    the model on every rank) starts again, and readiness turns back on."""

    def __init__(self, family: Family, config: ServerConfig, on_ready: Callable[[bool], None]) -> None:
        self.family, self.config, self.on_ready = family, config, on_ready
        self.plan = ParallelPlan.from_config(config)
        self.lock = threading.Lock()  # one generation or one restart at a time
        self.lost_reason: str | None = None
        self.closing = False
        self.inner: Runner | None = None
        self.passes: TwoPassSplit | None = None
        self.followers: list[subprocess.Popen] = []
        self._start_group()
        threading.Thread(target=self._watch, name="parallel-watch", daemon=True).start()

    def __getattr__(self, name: str) -> Any:  # check, use_loras, adapters, ...: the loaded runner's
        if name.startswith("_") or name in ("inner", "group", "sender", "passes"):
            raise AttributeError(name)
        if self.inner is None:
            raise RankLost(f"the context-parallel group is restarting ({self.lost_reason}); retry shortly")
        return getattr(self.inner, name)

    def _start_group(self) -> None:
        port = _free_port()
        world = self.plan.world_size
        self.followers = []
        for rank in range(1, world):
            env = {**os.environ, RANK_ENV: str(rank), WORLD_ENV: str(world), PORT_ENV: str(port)}
            command = [sys.executable, "-m", "kserve_diffusion.parallel.follower", *sys.argv[1:]]
            self.followers.append(subprocess.Popen(command, env=env))  # noqa: S603 - our module, our own flags
        shape = (world, self.plan.ulysses, self.plan.ring)
        logger.info("context parallelism: %d ranks (ulysses %d x ring %d), followers started", *shape)
        try:
            timeout = self.config.parallel_timeout
            self.group = open_group(0, world, ADDRESS, port, self.config.device, timeout, self._check_followers)
            self.sender = Sender(self.group.store)
            self.inner, self.passes = load_split(self.family, self.config, self.plan, self.group)
            # What the service reads without a request: kept through a restart.
            self.tasks, self.default_task = self.inner.tasks, self.inner.default_task
            self.size_multiples = self.inner.size_multiples
        except BaseException:
            self._stop_group()
            raise

    def _stop_group(self) -> None:
        if getattr(self, "sender", None) is not None:
            with contextlib.suppress(Exception):  # a lost store: the followers notice and exit on their own
                self.sender.send(STOP)
        for process in self.followers:
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.inner = None
        close_group()

    def generate(self, request: Any, seed: int, inputs: Any = None, control: Any = None) -> Any:
        """Send the resolved request to every follower, then run it here in step with them."""
        with self.lock:
            if self.lost_reason is not None or self.inner is None:
                raise RankLost(f"the context-parallel group is restarting ({self.lost_reason}); retry shortly")
            self.sender.send((request, seed, inputs))
            if self.passes is not None:
                self.passes.reset()
            observer = CollectiveObserver(control, self.group.control, self.passes)
            try:
                return self.inner.generate(request, seed, inputs, observer)
            except BaseException as exc:
                if observer.stopped_together:  # cancel, deadline, an out-of-memory error at a step: all in step
                    raise
                if isinstance(exc, RuntimeError | dist.DistError) and (_collective_failure(exc) or self.lost()):
                    self._lose(f"a collective failed: {str(exc).splitlines()[0][:200]}")
                    raise RankLost(f"a rank of the group was lost ({self.lost_reason}); the group restarts") from exc
                # Failed inside a step (out of memory in a layer, ...): the others may wait in a collective of it
                # (or, later, pair theirs with the next request's), so the group starts again.
                self._lose(f"rank 0 failed inside a step ({type(exc).__name__})")
                raise

    def _check_followers(self) -> None:
        for rank in self.lost():
            code = self.followers[rank - 1].returncode
            raise ConfigError(f"{self.plan.flag}: rank {rank} exited with {code} while starting")

    def lost(self) -> list[int]:
        """The follower ranks whose process has ended."""
        return [rank for rank, process in enumerate(self.followers, start=1) if process.poll() is not None]

    def _lose(self, reason: str) -> None:
        if self.lost_reason is None:
            self.lost_reason = reason
            logger.error("context parallelism: %s; not ready until the group has started again", reason)
            self.on_ready(False)

    def _watch(self) -> None:
        while not self.closing:
            time.sleep(WATCH_SECONDS)
            if self.lost_reason is None and self.inner is not None and self.lost():
                self._lose(f"rank(s) {self.lost()} exited")
            if self.lost_reason is not None and not self.closing:
                self._restart()

    def _restart(self) -> None:
        with self.lock:  # a generation that was running has failed by now (the collective timeout at worst)
            for process in self.followers:
                if process.poll() is None:
                    process.kill()
            self._stop_group()
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            try:
                self._start_group()
            except Exception:  # noqa: BLE001 - logged; the watcher tries again
                logger.exception("context parallelism: the group did not start again; retrying")
                return
            logger.info("context parallelism: the group started again (%d ranks)", self.plan.world_size)
            self.lost_reason = None
        self.on_ready(True)

    def close(self) -> None:
        """Stop the followers and leave the group."""
        self.closing = True
        with self.lock:
            self._stop_group()


def _collective_failure(exc: BaseException) -> bool:
    """Whether `exc` is a collective that failed: a peer gone (gloo, NCCL) or the collective timeout."""
    text = str(exc).lower()
    return any(sign in text for sign in ("connection closed", "timed out", "connection reset", "nccl", "gloo"))


def start(family: Family, config: ServerConfig, on_ready: Callable[[bool], None]) -> Runner:
    """Rank 0: start the followers (one process a GPU, the same flags), join them, load and split the model."""
    check_devices(ParallelPlan.from_config(config), config)
    return ParallelRunner(family, config, on_ready)
