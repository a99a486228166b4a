"""Configuration: CLI > environment > .env > defaults, typed, with clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from kserve_diffusion.api.request import DEFAULT_LIMITS, Limits
from kserve_diffusion.config import build_parser, defaults, parse_bool, parse_config, reference, settings
from kserve_diffusion.errors import ConfigError


def config(argv: list[str], env: dict[str, str] | None = None, tmp_path: Path | None = None, dotenv: str = ""):
    args = list(argv)
    if tmp_path is not None:
        env_file = tmp_path / ".env"
        env_file.write_text(dotenv)
        args += ["--env_file", str(env_file)]
    return parse_config(args, environ=env or {}, cuda_available=lambda: False)


def test_defaults() -> None:
    cfg = config(["--env_file", "/nonexistent/.env"])
    assert (cfg.model_type, cfg.model_id, cfg.device, cfg.dtype) == ("auto", "/mnt/models", "cpu", "float32")
    assert (cfg.max_num_images, cfg.max_steps, cfg.use_refiner) == (4, 150, False)
    assert cfg.model_server["http_port"] == 8080 and cfg.model_server["grpc_port"] == 8081


def test_precedence_cli_over_env_over_dotenv(tmp_path: Path) -> None:
    dotenv = "MODEL_ID=/from/dotenv\nMAX_STEPS=10\nMAX_NUM_IMAGES=2\nDTYPE=bfloat16\n"
    env = {"MODEL_ID": "/from/env", "MAX_STEPS": "20"}
    cfg = config(["--model_id", "/from/cli"], env, tmp_path, dotenv)
    assert cfg.model_id == "/from/cli"  # CLI beats env and .env
    assert cfg.max_steps == 20  # env beats .env
    assert cfg.max_num_images == 2  # .env beats the default
    assert cfg.dtype == "bfloat16"


def test_device_and_dtype_auto() -> None:
    on_gpu = parse_config(["--env_file", "/none"], environ={}, cuda_available=lambda: True)
    assert (on_gpu.device, on_gpu.dtype) == ("cuda", "auto")  # settled with the family (pipelines/detect.py)
    sdxl = parse_config(["--model_type", "sdxl"], environ={}, cuda_available=lambda: True)
    assert (sdxl.device, sdxl.dtype) == ("cuda", "float16")
    offload = parse_config(
        ["--model_type", "sdxl", "--device", "enable_model_cpu_offload"], environ={}, cuda_available=lambda: True
    )
    assert offload.dtype == "float16"
    assert config(["--dtype", "float32", "--device", "cuda"]).dtype == "float32"


@pytest.mark.parametrize(("text", "value"), [("true", True), ("False", False), ("1", True), ("0", False)])
def test_use_refiner_parses_booleans(text: str, value: bool) -> None:
    cfg = config(["--use_refiner", text, "--refiner_id", "/r"])
    assert cfg.use_refiner is value


def test_parse_bool_rejects_other_words() -> None:
    with pytest.raises(ValueError):
        parse_bool("maybe")
    with pytest.raises(ConfigError, match="USE_REFINER"):
        config([], {"USE_REFINER": "maybe"})


def test_refiner_id_alone_enables_refiner_and_use_refiner_needs_one() -> None:
    assert config(["--refiner_id", "/r"]).use_refiner is True
    with pytest.raises(ConfigError, match="--use_refiner"):
        config(["--use_refiner", "true"])


def test_kebab_case_spelling_and_env() -> None:
    assert config(["--model-type", "flux"]).model_type == "flux"
    assert config([], {"MODEL_TYPE": "wan"}).model_type == "wan"


@pytest.mark.parametrize(
    "argv",
    [["--model_typ", "sdxl"], ["--model_type", "dalle"], ["--device", "tpu"], ["--max_steps", "zero"]],
)
def test_bad_flags_are_startup_errors(argv: list[str], capsys) -> None:
    with pytest.raises((SystemExit, ConfigError)):
        config(argv)


def test_bad_env_value_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="MAX_STEPS"):
        config([], {"MAX_STEPS": "-3"})
    with pytest.raises(ConfigError, match="DEVICE"):
        config([], {"DEVICE": "gpu"})


def test_workers_must_be_one() -> None:
    with pytest.raises(ConfigError, match="--workers"):
        config(["--workers", "2"])


def test_token_from_env_or_dotenv_and_never_in_repr(tmp_path: Path) -> None:
    assert config([], {"HF_TOKEN": "hf_secret1"}).hf_token == "hf_secret1"
    assert config([], {"HUGGINGFACE_TOKEN": "hf_a", "HF_TOKEN": "hf_b"}).hf_token == "hf_a"
    cfg = config([], {}, tmp_path, "HUGGINGFACE_TOKEN=hf_secret2\n")
    assert cfg.hf_token == "hf_secret2"
    assert "hf_secret2" not in repr(cfg)


def test_kserve_flags_still_work() -> None:
    cfg = config(["--model_name", "fox", "--http_port", "9000", "--enable_grpc", "false"])
    assert cfg.model_name == "fox"
    assert cfg.model_server["http_port"] == 9000 and cfg.model_server["enable_grpc"] is False


def test_bare_boolean_flags_mean_true_and_still_take_a_value() -> None:
    assert config(["--allow_private_image_urls"]).allow_private_image_urls is True
    assert config(["--vae-tiling", "--fuse_qkv"]).vae_tiling is True
    assert config(["--vae_tiling=false"]).vae_tiling is False
    assert config(["--vae_tiling", "0", "--channels_last", "yes"]).channels_last is True
    assert config(["--use_refiner", "--refiner_id", "/r"]).use_refiner is True
    with pytest.raises(ConfigError, match="--vae_tiling: expected true/false"):
        config(["--vae_tiling=maybe"])


def test_out_of_range_values_name_the_range() -> None:
    with pytest.raises(ConfigError, match=r"--png_compress_level: expected 0 to 9, got '12'"):
        config(["--png_compress_level", "12"])
    with pytest.raises(ConfigError, match=r"REQUEST_TIMEOUT: expected more than 0, got '0'"):
        config([], {"REQUEST_TIMEOUT": "0"})
    with pytest.raises(ConfigError, match="--encode_threads: expected an integer"):
        config(["--encode_threads", "1.5"])
    assert config(["--encode_threads", "0"]).encode_threads == 0


DOCS = Path(__file__).parents[2] / "docs" / "configuration.md"


def _docs_rows() -> dict[str, list[str]]:
    rows = {}
    for line in DOCS.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip("|").split(" | ")]
        if line.startswith("| `--") and len(cells) == 5:
            rows[cells[0].strip("`")] = cells
    return rows


def test_configuration_docs_are_generated_from_the_settings() -> None:
    """docs/configuration.md is what `make docs` writes; edit config/settings.py, then run `make docs`."""
    assert DOCS.read_text() == reference.render(), "docs/configuration.md is stale: run `make docs`"


def test_configuration_docs_and_help_agree() -> None:
    """Every documented flag, variable and default is what --help says, and every flag --help has is documented."""
    help_text = " ".join(build_parser().format_help().split())
    rows = _docs_rows()
    declared = {item.flag for item in settings()}
    assert declared | {"--env_file"} == set(rows)
    for flag, (_, env, default, _, _) in rows.items():
        assert flag in help_text
        if flag != "--env_file":
            assert f"default: {default}; env: {env.strip('`')})" in help_text, flag


def test_limits_come_from_the_settings() -> None:
    cfg = config(["--max_steps", "12", "--max_side", "512", "--request_timeout", "30"])
    limits = Limits.from_config(cfg)
    assert (limits.max_steps, limits.max_side, limits.request_timeout) == (12, 512, 30.0)
    assert Limits.from_config(defaults()) == DEFAULT_LIMITS


def test_video_model_dtype_and_flags() -> None:
    cuda = lambda: True  # noqa: E731
    combined = parse_config(["--model_type", "sdxl", "--video_model_id", "/m/wan"], {}, cuda_available=cuda)
    assert (combined.dtype, combined.video_dtype) == ("float16", "bfloat16")  # each family's own auto
    assert parse_config(["--model_type", "wan"], {}, cuda_available=cuda).dtype == "bfloat16"
    explicit = parse_config(["--video_model_id", "/m/wan", "--dtype", "float32"], {}, cuda_available=cuda)
    assert (explicit.dtype, explicit.video_dtype) == ("float32", "float32")
    cpu = parse_config(["--video_model_id", "/m/wan", "--vae_tiling", "true", "--max_frames", "41"], {})
    assert (cpu.video_dtype, cpu.vae_tiling, cpu.max_frames, cpu.flow_shift) == ("float32", True, 41, None)
    with pytest.raises(ConfigError, match="--video_model_id: adds Wan beside an image model"):
        parse_config(["--model_type", "wan", "--video_model_id", "/m/wan"], {})
