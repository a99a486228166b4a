"""The one helper that runs the examples of README.md and docs/ against a real server.

An example is a ```bash or ```python block that talks to a demo address (`localhost:8080`, gRPC
`localhost:8081`; the FLUX section's `localhost:8090`). Blocks that start a server themselves are
documentation of commands, not calls, and are left out.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import ServerProcess, server_environment

ROOT = Path(__file__).parents[1]
# README first: later pages reuse the files its examples write (fox.png).
PAGES = (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")))
_BLOCK = re.compile(r"```(bash|python)\n(.*?)```", re.DOTALL)
_STARTS_A_SERVER = ("kserve_diffusion --", "kserve-diffusion --", "make demo", "podman ", "oc ", "kubectl ")


@dataclass(frozen=True)
class Example:
    """One runnable block: where it is and what it says."""

    page: str
    language: str
    code: str

    def __str__(self) -> str:
        return f"{self.page}: {self.code.strip().splitlines()[0]}"


def examples(http_host: str, grpc_host: str | None = None) -> list[Example]:
    """Every block of README.md and docs/*.md that calls `http_host` (or `grpc_host`), in page order."""
    hosts = [host for host in (http_host, grpc_host) if host]
    found = []
    for page in PAGES:
        for language, code in _BLOCK.findall(page.read_text()):
            if any(host in code for host in hosts) and not any(word in code for word in _STARTS_A_SERVER):
                found.append(Example(str(page.relative_to(ROOT)), language, code))
    return found


def run(example: Example, server: ServerProcess, cwd: Path, http_host: str, grpc_host: str | None = None) -> str:
    """Run `example` against `server` (its ports swapped in) in `cwd`; it must succeed. Its output."""
    code = example.code.replace(http_host, f"127.0.0.1:{server.http_port}")
    if grpc_host:
        code = code.replace(grpc_host, server.grpc_target)
    # `python` in a shell example is this environment's, as it is the venv's for a user of `make demo`.
    env = server_environment({"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"})
    command = ["bash", "-c", code] if example.language == "bash" else [sys.executable, "-c", code]
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, f"{example}\n{result.stderr[-3000:]}"
    assert '"error"' not in result.stdout, f"{example}\n{result.stdout[-3000:]}"
    return result.stdout
