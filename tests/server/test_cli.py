"""The console script as a user runs it: --help, startup errors, exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx

from tests.conftest import ServerProcess


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kserve_diffusion", *args], capture_output=True, text=True, timeout=120, env=env
    )


def test_help_shows_our_flags_and_kserve_flags() -> None:
    result = run("--help")
    assert result.returncode == 0
    for flag in ("--model_type", "--model_id", "--single_file_config", "--use_refiner", "--device", "--http_port"):
        assert flag in result.stdout


def test_misspelled_flag_is_a_startup_error() -> None:
    result = run("--model_idd", "/x")
    assert result.returncode == 2
    assert "unrecognized arguments: --model_idd" in result.stderr


def test_flux_with_an_sdxl_only_flag_is_a_startup_error() -> None:
    result = run("--model-type", "flux", "--device", "cpu", "--inpaint_model_id", "/x")
    assert result.returncode == 2
    assert "--inpaint_model_id: applies to SDXL only, not --model_type flux" in result.stderr


def test_missing_model_folder_is_a_clear_error(tmp_path: Path) -> None:
    result = run("--model_id", str(tmp_path / "nothing"), "--device", "cpu")
    assert result.returncode == 2
    assert "not a diffusers model folder" in result.stderr


def test_token_is_never_logged(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    secret = "hf_do_not_log_me_123"
    server = ServerProcess(["--model_id", str(tiny_models["sdxl"])], tmp_path / "log", env={"HF_TOKEN": secret})
    try:
        server.wait_ready()
        response = httpx.post(
            f"{server.url}/v1/models/sdxl:predict",
            json={"instances": [{"prompt": "x", "height": 64, "width": 64, "num_inference_steps": 1}]},
            timeout=60,
        )
        assert response.status_code == 200
    finally:
        server.stop()
    assert secret not in server.log()
