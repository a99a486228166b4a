"""Shared fixtures: tiny models built once per session, real server processes on loopback ports."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from kserve_diffusion.config import settings
from kserve_diffusion.config.parsing import TOKEN_ENV_VARS
from kserve_diffusion.testing import tiny
from kserve_diffusion.testing.adapters import lora_layers, save_diffusers, save_kohya, write_adapters
from safetensors.torch import load_file, save_file

from tests.image_host import ImageHost
from tests.s3_servers import S3Process

STARTUP_TIMEOUT = 180
ROOT = Path(__file__).parents[1]
# PATH with this interpreter's folder first, so the start scripts find this venv's kserve-diffusion.
VENV_PATH = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
# Limits of `image_server`, small enough for the tests to cross them cheaply.
IMAGE_SERVER_MAX_BYTES = 300_000
IMAGE_SERVER_MAX_PIXELS = 250_000
IMAGE_SERVER_FETCH_TIMEOUT = 2


# The server's own settings and tokens: never inherited from the developer's shell or CI.
SERVER_ENV_VARS = frozenset({item.env for item in settings()} | set(TOKEN_ENV_VARS))


def server_environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment without the server's variables, plus `extra`."""
    return {**{k: v for k, v in os.environ.items() if k not in SERVER_ENV_VARS}, **(extra or {})}


@pytest.fixture(autouse=True)
def hermetic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test runs in its own empty folder (no .env unless it writes one) without the server's variables."""
    for name in SERVER_ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """`python -m kserve_diffusion ...` in a subprocess, with its log kept for assertions."""

    def __init__(
        self,
        args: list[str],
        log_path: Path,
        env: dict[str, str] | None = None,
        launcher: list[str] | None = None,
        model_name: str = "sdxl",
        marks: bool = False,
    ):
        """`launcher` replaces `python -m kserve_diffusion --model_name NAME --device cpu` (e.g. a start script).
        Without `marks` (or a --provenance of its own) the server marks with the watermark alone: each C2PA
        signature has its own time and id, and these tests check that the same request gives the same bytes.
        The servers with `marks` (the demo, the notebook's, tests/server/test_provenance.py's) keep the default."""
        if not marks and "--provenance" not in args:
            args = [*args, "--provenance", "watermark"]
        self.http_port, self.grpc_port = free_port(), free_port()
        self.log_path = log_path
        self.model_name = model_name
        default = [sys.executable, "-m", "kserve_diffusion", "--model_name", model_name, "--device", "cpu"]
        ports = ["--http_port", str(self.http_port), "--grpc_port", str(self.grpc_port)]
        self.command = [*(launcher or default), *ports, *args]
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self._env = server_environment(env)
        # Its own folder as the working directory: no stray .env is read.
        self.process = subprocess.Popen(
            self.command, stdout=self._log, stderr=subprocess.STDOUT, env=self._env, cwd=log_path.parent
        )

    @property
    def url(self) -> str:
        """Base URL of the REST server."""
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_target(self) -> str:
        """host:port of the gRPC server."""
        return f"127.0.0.1:{self.grpc_port}"

    def log(self) -> str:
        """Everything the server printed so far."""
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = STARTUP_TIMEOUT) -> ServerProcess:
        """Block until the model reports ready; fail with the log if the process dies."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()[-4000:]}")
            try:
                if httpx.get(f"{self.url}/v2/models/{self.model_name}/ready", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"server not ready after {timeout}s:\n{self.log()[-4000:]}")

    def restart(self) -> ServerProcess:
        """The same server started again (after it was killed or stopped), on the same ports, logging on."""
        self.stop()
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            self.command, stdout=self._log, stderr=subprocess.STDOUT, env=self._env, cwd=self.log_path.parent
        )
        return self.wait_ready()

    def stop(self) -> None:
        """Terminate the process and close its log."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny SDXL base, refiner and inpainting model, each as a diffusers folder and as a single file + config;
    the tiny FLUX (dev-like as a folder and as a single-file transformer + components; schnell-like); every Wan
    variant (Wan2.1 T2V and I2V, Wan2.2 T2V-A14B, I2V-A14B and TI2V-5B)."""
    root = tmp_path_factory.mktemp("tiny")
    return {
        "sdxl": tiny.write("sdxl", root / "sdxl"),
        "sdxl_file": tiny.write("sdxl", root / "sdxl-file", single_file=True),
        "refiner": tiny.write("sdxl-refiner", root / "refiner"),
        "refiner_file": tiny.write("sdxl-refiner", root / "refiner-file", single_file=True),
        "inpaint": tiny.write("sdxl-inpaint", root / "inpaint"),
        "inpaint_file": tiny.write("sdxl-inpaint", root / "inpaint-file", single_file=True),
        "flux": tiny.write("flux", root / "flux"),
        "flux_file": tiny.write("flux", root / "flux-file", single_file=True),
        "flux_schnell": tiny.write("flux-schnell", root / "flux-schnell"),
        "wan": tiny.write("wan", root / "wan"),
        "wan_i2v": tiny.write("wan-i2v", root / "wan-i2v"),
        "wan22_t2v": tiny.write("wan22-t2v", root / "wan22-t2v"),
        "wan22_i2v": tiny.write("wan22-i2v", root / "wan22-i2v"),
        "wan22_ti2v": tiny.write("wan22-ti2v", root / "wan22-ti2v"),
    }


def start_server(
    args: list[str], log_path: Path, env: dict[str, str] | None = None, model_name: str = "sdxl", marks: bool = False
) -> ServerProcess:
    """Start a server and wait until it is ready (`marks`: with the default marks, see ServerProcess)."""
    return ServerProcess(args, log_path, env, model_name=model_name, marks=marks).wait_ready()


@pytest.fixture(scope="session")
def base_server(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server with the tiny SDXL base from a diffusers folder."""
    server = start_server(["--model_id", str(tiny_models["sdxl"])], tmp_path_factory.mktemp("logs") / "base.log")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def refiner_server(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """start-refiner.sh as written: base and refiner from single files with local configs (offline), the paths
    overridden by its environment variables and `--device cpu` passed through after its own --device."""
    base, refiner = tiny_models["sdxl_file"], tiny_models["refiner_file"]
    env = {
        "SINGLE_FILE_MODEL": str(base),
        "SINGLE_FILE_CONFIG": str(base.parent / "config"),
        "REFINER_SINGLE_FILE_MODEL": str(refiner),
        "REFINER_SINGLE_FILE_CONFIG": str(refiner.parent / "config"),
        "HF_HUB_OFFLINE": "1",
        "PATH": VENV_PATH,
    }
    log = tmp_path_factory.mktemp("logs") / "refiner.log"
    server = ServerProcess(["--device", "cpu"], log, env=env, launcher=[str(ROOT / "start-refiner.sh")]).wait_ready()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def image_host() -> Iterator[ImageHost]:
    """The loopback image server (good files, slow, endless and redirecting routes)."""
    host = ImageHost().start()
    yield host
    host.stop()


@pytest.fixture(scope="session")
def image_server(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The tiny base with a dedicated inpainting single file, private image URLs allowed, small input limits,
    and KServe's /docs page on."""
    inpaint = tiny_models["inpaint_file"]
    args = [
        "--model_id",
        str(tiny_models["sdxl"]),
        "--inpaint_model_id",
        str(inpaint),
        "--inpaint_single_file_config",
        str(inpaint.parent / "config"),
        "--allow_private_image_urls",
        "true",
        "--max_image_bytes",
        str(IMAGE_SERVER_MAX_BYTES),
        "--max_image_pixels",
        str(IMAGE_SERVER_MAX_PIXELS),
        "--image_fetch_timeout",
        str(IMAGE_SERVER_FETCH_TIMEOUT),
        "--enable_docs_url",
        "true",
    ]
    server = start_server(args, tmp_path_factory.mktemp("logs") / "image.log", env={"HF_HUB_OFFLINE": "1"})
    yield server
    server.stop()


@pytest.fixture(scope="session")
def lora_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny LoRA adapters of every family in both layouts (the demo's SDXL and Wan ones among them), and the
    ones a server must refuse: another SDXL architecture, a Stable Diffusion 1.5 adapter, a file without
    LoRA matrices, a symlink out of the folder, a file that is not an adapter."""
    folder = tmp_path_factory.mktemp("loras")
    for family in ("sdxl", "flux", "wan"):
        write_adapters(tiny.BUILDERS[family](), family, folder)
    refiner = tiny.BUILDERS["sdxl-refiner"]()  # its UNet has other cross-attention widths than the base's
    save_diffusers(refiner, lora_layers(refiner, "sdxl", seed=4), folder / "other-architecture")
    sd15 = save_kohya("sdxl", lora_layers(tiny.BUILDERS["sdxl"](), "sdxl", seed=5), folder / "sd15-style.safetensors")
    save_file(load_file(str(sd15)), str(sd15), metadata={"ss_base_model_version": "sd_v1"})  # as sd-scripts says
    save_file({"conv.weight": torch.zeros(3, 3)}, str(folder / "not-a-lora.safetensors"))
    outside = tmp_path_factory.mktemp("outside") / "secret.safetensors"
    save_file({"x.lora_A.weight": torch.zeros(1, 1)}, str(outside))
    (folder / "escape.safetensors").symlink_to(outside)
    (folder / "notes.txt").write_text("not an adapter")
    return folder


@pytest.fixture(scope="session")
def compile_loras(lora_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The SDXL adapters alone, copied (links leading out of --lora_dir are refused): the compiled server's."""
    folder = tmp_path_factory.mktemp("compile-loras")
    for name in ("sdxl-style.safetensors", "sdxl-kohya.safetensors"):
        shutil.copy(lora_dir / name, folder / name)
    shutil.copytree(lora_dir / "sdxl-detail", folder / "sdxl-detail")
    return folder


@pytest.fixture(scope="session")
def compiled_server(
    tiny_models: dict[str, Path], compile_loras: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """The tiny SDXL with regional compilation (so a warm-up before ready), encoding on the accelerator thread,
    and LoRA hot-swap slots of rank 8 sized from `compile_loras`."""
    args = ["--model_id", str(tiny_models["sdxl"]), "--compile", "regional", "--encode_threads", "0"]
    args += ["--lora_dir", str(compile_loras), "--max_lora_rank", "8"]
    server = ServerProcess(args, tmp_path_factory.mktemp("logs") / "compiled.log").wait_ready(timeout=600)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def wan_servers(
    tiny_models: dict[str, Path], lora_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, ServerProcess]]:
    """The Wan variants no other server serves, started together (their start-ups overlap): "demo" is what
    `make demo` serves (the tiny SDXL with the tiny Wan2.2 TI2V-5B beside it, tiny LoRA adapters in --lora_dir),
    the others serve model "wan" alone: Wan2.1 I2V, Wan2.2 T2V-A14B (with --cache first_block) and I2V-A14B."""
    logs = tmp_path_factory.mktemp("logs")
    demo = ["--model_id", str(tiny_models["sdxl"]), "--video_model_id", str(tiny_models["wan22_ti2v"])]
    alone = {"wan2.1-i2v": "wan_i2v", "wan2.2-t2v-a14b": "wan22_t2v", "wan2.2-i2v-a14b": "wan22_i2v"}
    servers = {"demo": ServerProcess([*demo, "--lora_dir", str(lora_dir)], logs / "demo.log", marks=True)}
    # The T2V-A14B server also runs --cache (a threshold that skips whatever First-Block-Cache may).
    options = {"wan2.2-t2v-a14b": ["--cache", "first_block", "--cache_threshold", "10"]}
    for variant, model in alone.items():
        args = ["--model_type", "wan", "--model_id", str(tiny_models[model]), *options.get(variant, [])]
        servers[variant] = ServerProcess(args, logs / f"{variant}.log", model_name="wan")
    try:
        for server in servers.values():
            server.wait_ready()
        yield servers
    finally:
        for server in servers.values():
            server.stop()


@pytest.fixture(scope="session")
def demo_server(wan_servers: dict[str, ServerProcess]) -> ServerProcess:
    """What `make demo` serves (model "sdxl": SDXL + Wan2.2 TI2V-5B + LoRA adapters), where the docs' examples run."""
    return wan_servers["demo"]


@pytest.fixture(scope="session")
def video_server(
    tiny_models: dict[str, Path], lora_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """The tiny SDXL base with the tiny Wan2.1 T2V beside it (--video_model_id), and tiny LoRA adapters in
    --lora_dir (those of `lora_dir`)."""
    args = ["--model_id", str(tiny_models["sdxl"]), "--video_model_id", str(tiny_models["wan"])]
    args += ["--lora_dir", str(lora_dir)]
    server = start_server(args, tmp_path_factory.mktemp("logs") / "video.log")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def flux_server(
    tiny_models: dict[str, Path], lora_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """Model "flux", the tiny FLUX (dev-like): its transformer from a single file, the rest from --model_id, offline;
    LoRA adapters from `lora_dir`."""
    checkpoint = tiny_models["flux_file"]
    args = ["--model_type", "flux", "--model_id", str(checkpoint.parent / "components"), "--lora_dir", str(lora_dir)]
    args += ["--single_file_model"]
    log = tmp_path_factory.mktemp("logs") / "flux.log"
    server = start_server([*args, str(checkpoint)], log, env={"HF_HUB_OFFLINE": "1"}, model_name="flux")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def client(base_server: ServerProcess) -> Iterator[httpx.Client]:
    """An httpx client for the base server."""
    with httpx.Client(base_url=base_server.url, timeout=120) as http:
        yield http


class RedisProcess:
    """A real `redis-server` on a free loopback port, without persistence, in its own folder."""

    def __init__(self, folder: Path, *settings: str, port: int | None = None) -> None:
        """`settings`: more redis-server arguments (e.g. --maxmemory 3mb; later ones win); `port`: a restart's."""
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed: apt-get install redis-server (README, Development)")
        self.folder, self.settings = folder, settings
        self.port = port or free_port()
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.process = subprocess.Popen(
            [*args, "--dir", str(folder), *settings], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, cwd=folder
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("redis-server did not start")

    @property
    def url(self) -> str:
        """The URL to pass as --job_store."""
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        """Stop the server (its data is gone unless its settings turned persistence on)."""
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=20)

    def restart(self) -> RedisProcess:
        """Stop it and start it again on the same port, folder and settings."""
        self.stop()
        return RedisProcess(self.folder, *self.settings, port=self.port)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    """One Redis for the session's job store tests."""
    server = RedisProcess(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Process]:
    """One moto_server (S3 API) for the session's output-store tests, with the bucket `results`."""
    server = S3Process("moto", tmp_path_factory.mktemp("moto"), free_port())
    yield server
    server.stop()


def chromium() -> str | None:
    """Debian's Chromium (or the one $CHROMIUM names) for the playground's browser tests."""
    return os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium a test module, driven by Playwright through its executable_path (no browser download).
    Module-scoped: Playwright's sync API holds an event loop while it runs, which later asyncio.run calls must
    not find."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed: make install")
    executable = chromium()
    if executable is None:
        pytest.skip(
            "Chromium is not installed: apt-get install chromium (make test does it as root), or set CHROMIUM; "
            "the playground's browser tests are skipped"
        )
    with sync_api.sync_playwright() as driver:
        launched = driver.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield launched
        launched.close()
