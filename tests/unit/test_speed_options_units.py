"""Speed options without a model: flag conflicts, what --quantize needs, the settings' ranges, cache reports."""

from __future__ import annotations

import re

import pytest
from kserve_diffusion.api.results import CacheReport, cache_fields
from kserve_diffusion.config import defaults, parse_config
from kserve_diffusion.errors import ConfigError
from kserve_diffusion.pipelines import attention, cache, combinations, quantize, serving_family


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            {"device": "enable_sequential_cpu_offload", "compile": "full"},
            "--device enable_sequential_cpu_offload with --compile full: offload hooks",
        ),
        ({"device": "group_offload", "compile": "full"}, "--device group_offload with --compile full"),
        (
            {"cache": "first_block", "compile": "full"},
            "--cache first_block with --compile full: the cache decides at every step",
        ),
        ({"quantize": "int8", "fuse_qkv": True}, "--quantize int8 with --fuse_qkv: fusing concatenates"),
        (
            {"quantize": "fp8", "single_file_model": "/m.safetensors"},
            "--quantize fp8 with --single_file_model: weights are quantized while loading",
        ),
        (
            {"quantize": "int8", "lora_dir": "/loras", "compile": "regional"},
            "--quantize int8 with --lora_dir: with --compile",
        ),
    ],
)
def test_flags_that_cannot_work_together_name_both(settings: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        combinations.check(defaults(**settings))
    with pytest.raises(ConfigError, match=re.escape(message)):  # before anything is loaded
        serving_family(defaults(model_id="/nowhere", **settings))


def test_compatible_flags_pass() -> None:
    for settings in (
        {"cache": "first_block", "compile": "regional"},
        {"quantize": "int8", "lora_dir": "/loras"},
        {"device": "group_offload", "compile": "regional"},
    ):
        combinations.check(defaults(**settings))


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"cache": "taylorseer"}, "--cache taylorseer: caches the FLUX and Wan transformers; SDXL's UNet has no"),
        ({"attention_backend": "flash"}, "--attention_backend flash: applies to the FLUX and Wan transformers"),
    ],
)
def test_options_for_transformers_are_startup_errors_on_sdxl(settings: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        serving_family(defaults(model_type="sdxl", **settings))
    cache.check_family(defaults(model_type="flux", **settings), ("flux",))  # FLUX and Wan take them
    attention.check_family(defaults(model_type="wan", **settings), ("wan",))


def test_quantize_says_what_this_machine_lacks(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match=r"--quantize nf4: bitsandbytes 4-bit needs a CUDA GPU"):
        quantize.check_runs_here(defaults(quantize="nf4"))
    monkeypatch.setattr(quantize.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match=r"--quantize int8: needs the torchao package.*pip install '\.\[gpu\]'"):
        quantize.check_runs_here(defaults(quantize="int8"))
    quantize.check_runs_here(defaults(quantize="none"))  # nothing needed


def test_fp8_on_a_gpu_without_fp8_names_the_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(quantize.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(quantize.torch.cuda, "get_device_capability", lambda: (8, 0))
    monkeypatch.setattr(quantize.torch.cuda, "get_device_name", lambda: "NVIDIA A100-SXM4-80GB")
    with pytest.raises(ConfigError, match=r"this NVIDIA A100-SXM4-80GB is 8\.0; use --quantize int8 or nf4"):
        quantize.check_runs_here(defaults(quantize="fp8", device="cuda"))
    monkeypatch.setattr(quantize.torch.cuda, "get_device_capability", lambda: (9, 0))  # H100, H200
    quantize.check_runs_here(defaults(quantize="fp8", device="cuda"))


def test_the_settings_parse_with_their_ranges() -> None:
    config = parse_config(
        ["--cache", "mag", "--cache_threshold", "0.1", "--cache_start_step", "2", "--quantize", "int8"], environ={}
    )
    assert (config.cache, config.cache_threshold, config.cache_start_step, config.quantize) == ("mag", 0.1, 2, "int8")
    for bad in (["--cache", "teacache"], ["--cache_interval", "0"], ["--attention_backend", "fa9"]):
        with pytest.raises(ConfigError, match=bad[0]):
            parse_config(bad, environ={})
    assert parse_config(["--device", "group_offload"], environ={}).device == "group_offload"


def test_mag_ratios_are_read_and_required_for_wan() -> None:
    with pytest.raises(ConfigError, match="--cache mag: MagCache needs the model's magnitude ratios"):
        cache.CACHES["mag"](defaults(cache="mag"), "wan", cache.torch.float32, 8)
    made = cache.CACHES["mag"](defaults(cache="mag", cache_mag_ratios="1.0,0.9,0.8"), "wan", cache.torch.float32, 6)
    assert len(made.mag_ratios) == 6 and made.retention_ratio == 0.5  # interpolated to the steps; 3 of 6 kept
    with pytest.raises(ConfigError, match="--cache_mag_ratios: expected numbers separated by commas"):
        cache.CACHES["mag"](defaults(cache="mag", cache_mag_ratios="1.0,x"), "wan", cache.torch.float32, 6)


def test_a_cache_report_shows_counts_and_the_fraction() -> None:
    assert cache_fields(CacheReport(30, 120)) == {"skipped_layers": 30, "total_layers": 120, "skipped_fraction": 0.25}
    assert CacheReport(0, 0).skipped_fraction == 0.0
