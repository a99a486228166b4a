"""The README's shell examples run as written against a server (the demo's port swapped for the test's)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ServerProcess

README = Path(__file__).parents[1] / "README.md"


def examples(host: str) -> list[str]:
    """Every ```bash block of the README that talks to `host`, in order."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.DOTALL)
    return [block for block in blocks if host in block and "kserve_diffusion --" not in block]


def demo_examples() -> list[str]:
    """The examples for the server `make demo` starts."""
    return examples("localhost:8080")


def run_examples(blocks: list[str], host: str, server: ServerProcess, cwd: Path) -> str:
    """Run each block against `server`; every one must succeed without an error answer. Their output."""
    outputs = []
    for block in blocks:
        script = block.replace(host, f"127.0.0.1:{server.http_port}")
        result = subprocess.run(
            ["bash", "-c", script], cwd=cwd, capture_output=True, text=True, timeout=300, check=False
        )
        assert result.returncode == 0, f"{block}\n{result.stderr}"
        assert result.stdout.strip() or "base64 -d >" in block, block
        assert '"error"' not in result.stdout, f"{block}\n{result.stdout}"
        outputs.append(result.stdout)
    return "\n".join(outputs)


def test_the_readme_has_an_example_for_each_task() -> None:
    text = "\n".join(demo_examples())
    assert '"task_type": "img2img"' in text and '"mask": "%s"' in text and "/v2/models/sdxl/infer" in text
    assert '"task_type": "text2video"' in text


@pytest.mark.skipif(not (shutil.which("curl") and shutil.which("jq")), reason="needs curl and jq")
def test_readme_examples_run_as_written(video_server: ServerProcess, tmp_path: Path) -> None:
    """Against the server `make demo` starts: tiny SDXL with the tiny Wan beside it."""
    answers = run_examples(demo_examples(), "localhost:8080", video_server, tmp_path)
    for task in ("text2img", "img2img", "inpaint", "text2video"):
        assert re.search(rf'"task_type":\s*"{task}"', answers), task
    assert (tmp_path / "fox.png").read_bytes().startswith(b"\x89PNG")
    assert (tmp_path / "fox.mp4").read_bytes()[4:8] == b"ftyp"


@pytest.mark.skipif(not (shutil.which("curl") and shutil.which("jq")), reason="needs curl and jq")
def test_readme_flux_examples_run_as_written(flux_server: ServerProcess, tmp_path: Path) -> None:
    """The FLUX section's calls, against the tiny FLUX served as model "flux" (the README's port 8090)."""
    blocks = examples("localhost:8090")
    assert blocks and all("/models/flux" in block for block in blocks)
    answers = run_examples(blocks, "localhost:8090", flux_server, tmp_path)
    assert '"task_type": "text2img"' in answers and "true_cfg_scale" in "\n".join(blocks)
