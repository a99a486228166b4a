"""FLUX units: variant detection by name, configuration."""

from __future__ import annotations

import pytest
from kserve_diffusion.config import parse_config
from kserve_diffusion.errors import ConfigError
from kserve_diffusion.pipelines import flux


def test_variant_falls_back_to_the_name() -> None:
    assert flux.detect_variant({}, "/models/FLUX.1-schnell")[0] == "schnell"
    assert flux.detect_variant({}, "black-forest-labs/FLUX.1-dev")[0] == "dev"
    with pytest.raises(ConfigError, match="--flux_variant dev or schnell"):
        flux.detect_variant({}, "/models/my-finetune")


def test_flux_configuration() -> None:
    on_gpu = parse_config(["--model_type", "flux", "--env_file", "/none"], environ={}, cuda_available=lambda: True)
    assert (on_gpu.device, on_gpu.dtype, on_gpu.flux_variant) == ("cuda", "bfloat16", "auto")
    on_cpu = parse_config(["--model_type", "flux"], environ={"FLUX_VARIANT": "schnell"}, cuda_available=lambda: False)
    assert (on_cpu.dtype, on_cpu.flux_variant) == ("float32", "schnell")
    with pytest.raises(ConfigError, match="--flux_variant: expected one of auto, dev, schnell, got 'pro'"):
        parse_config(["--flux_variant", "pro"], environ={}, cuda_available=lambda: False)
