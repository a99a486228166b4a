"""The context- and CFG-parallel plan's start-up checks, and the request channel between the ranks."""

from __future__ import annotations

import os
from dataclasses import replace
from datetime import timedelta

import pytest
import torch.distributed as dist
from kserve_diffusion.config import parse_config
from kserve_diffusion.errors import ConfigError
from kserve_diffusion.parallel.channel import STOP, Receiver, Sender
from kserve_diffusion.parallel.plan import ParallelPlan, check_devices, check_models
from kserve_diffusion.testing import builders

from tests.conftest import free_port


def config(*flags: str):
    """The configuration these flags give (no model needed)."""
    return parse_config(["--model_id", "x", *flags])


def test_the_plan_counts_its_ranks() -> None:
    assert ParallelPlan.from_config(config()).world_size == 1 and not ParallelPlan.from_config(config()).enabled
    plan = ParallelPlan.from_config(config("--ulysses_degree", "2", "--ring_degree", "2"))
    assert (plan.world_size, plan.context, plan.flag) == (4, True, "--ulysses_degree")
    cfg = ParallelPlan.from_config(config("--cfg_parallel", "true"))
    assert (cfg.world_size, cfg.context, cfg.flag) == (2, False, "--cfg_parallel")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--ulysses_degree", "2", "--cfg_parallel", "true"], "--cfg_parallel: not combined with --ulysses_degree"),
        (["--ring_degree", "2"], "--ring_degree: ring attention needs an attention backend that returns the log-sum"),
        (
            ["--ulysses_degree", "2", "--device", "cuda"],
            "--ulysses_degree: 2 ranks (ulysses 2 x ring 1) need as many GPUs",
        ),
        (["--ulysses_degree", "2", "--device", "group_offload"], "context parallelism runs with --device cuda"),
        (["--ulysses_degree", "2", "--compile", "regional"], "--compile: not combined with --ulysses_degree yet"),
    ],
)
def test_impossible_plans_are_refused_naming_the_flag(flags: list[str], message: str) -> None:
    cfg = config(*flags)
    if "cuda" in flags and __import__("torch").cuda.device_count() >= 2:
        pytest.skip("this machine has the GPUs")
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_devices(ParallelPlan.from_config(cfg), cfg)


def test_one_rank_and_the_cpu_plans_pass() -> None:
    for flags in ([], ["--ulysses_degree", "2"], ["--cfg_parallel", "true"]):
        cfg = config(*flags)
        check_devices(ParallelPlan.from_config(cfg), cfg)


def test_the_model_must_have_a_plan_and_heads_the_degree_divides() -> None:
    flux = builders.flux_transformer(True)  # 2 heads
    check_models(ParallelPlan(2), [flux], "flux")
    with pytest.raises(
        ConfigError, match="--ulysses_degree: must divide FluxTransformer2DModel's 2 attention heads, got 4"
    ):
        check_models(ParallelPlan(4), [flux], "flux")
    unet = builders.build_sdxl_base().unet
    with pytest.raises(ConfigError, match="UNet2DConditionModel \\(sdxl\\) has no context-parallel plan"):
        check_models(ParallelPlan(2), [unet], "sdxl")
    with pytest.raises(ConfigError, match="has no transformer to split"):
        check_models(ParallelPlan(2), [], "sdxl")
    check_models(ParallelPlan(1, 1, True), [unet], "sdxl")  # CFG parallelism splits the passes: any denoiser


def test_requests_reach_the_followers_in_order_and_stop() -> None:
    port = free_port()
    host = dist.TCPStore("127.0.0.1", port, 2, is_master=True, timeout=timedelta(seconds=10), wait_for_workers=False)
    client = dist.TCPStore("127.0.0.1", port, 2, is_master=False, timeout=timedelta(seconds=10))
    sender, receiver = Sender(host), Receiver(client, os.getppid())
    for message in ("first", {"second": 2}, ("third",)):  # rank 0 sends the next once every rank ran the last
        sender.send(message)
        assert receiver.receive() == message
    assert not host.check(["request/1"]) and host.check(["request/3"])  # what every follower read is forgotten
    sender.send(STOP)
    assert receiver.receive() is STOP
    orphan = Receiver(client, parent=-1)  # rank 0 gone: this process was re-parented
    assert orphan.receive() is STOP


def test_config_flags_are_declared_once() -> None:
    cfg = replace(config("--ulysses_degree", "2", "--parallel_timeout", "30"), ring_degree=1)
    assert (cfg.ulysses_degree, cfg.parallel_timeout, cfg.cfg_parallel) == (2, 30.0, False)
