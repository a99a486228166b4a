"""The parallel path on GPUs (`make gpu-check`): NCCL for one rank on the lent machine's one GPU; Ulysses and Ring
over two GPUs where a machine has them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from kserve_diffusion.testing import tiny

from tests.conftest import ROOT, start_server
from tests.server.test_parallel import IMAGE, assert_same, generate

pytestmark = pytest.mark.gpu

ONE_RANK = """
import torch
from dataclasses import replace
from benchmarks import gpu
from kserve_diffusion.api.request import DEFAULT_LIMITS, parse_request
from kserve_diffusion.config import defaults
from kserve_diffusion.parallel.collective import CollectiveObserver, any_rank
from kserve_diffusion.parallel.group import close_group, open_group
group = open_group(0, 1, "127.0.0.1", {port}, "cuda", 60, lambda: None)  # NCCL, and the gloo control group
assert any_rank(True, group.control) and not any_rank(False, group.control)
runner = gpu._runner(gpu.CASES[2], gpu.TINY, replace(defaults(), device="cuda"), "cuda")
request = runner.check(parse_request({{"prompt": "a fox", "height": 64, "width": 64}}, DEFAULT_LIMITS), DEFAULT_LIMITS)
images = runner.generate(request, 1, control=CollectiveObserver(None, group.control))
assert images[0].size == (64, 64)
close_group()
print("one rank ok")
"""


def gpus(count: int) -> None:
    """Skip unless this machine has `count` CUDA GPUs."""
    if torch.cuda.device_count() < count:
        pytest.skip(f"needs {count} CUDA GPUs, {torch.cuda.device_count()} here")


def test_the_parallel_path_on_one_gpu() -> None:
    """Degree 1 on the one GPU: the NCCL group, the control group, a collective decision and a generation."""
    gpus(1)
    from tests.conftest import free_port

    code = ONE_RANK.format(port=free_port())
    ran = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    assert ran.returncode == 0 and "one rank ok" in ran.stdout, ran.stderr[-3000:]


@pytest.mark.parametrize("flags", [["--ulysses_degree", "2"], ["--ring_degree", "2", "--attention_backend", "flash"]])
def test_two_gpus_give_the_pixels_of_one(flags: list[str], tmp_path: Path) -> None:
    gpus(2)
    model = tiny.write("flux", tmp_path / "flux")
    base = ["--model_id", str(model), "--device", "cuda"]
    one = start_server(base, tmp_path / "one.log", model_name="flux")
    try:
        two = start_server([*base, *flags], tmp_path / "two.log", model_name="flux")
        try:
            assert_same(generate(one, IMAGE)[1], generate(two, IMAGE)[1])
        finally:
            two.stop()
    finally:
        one.stop()
