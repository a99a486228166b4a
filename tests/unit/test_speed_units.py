"""Speed option units: configuration."""

from __future__ import annotations

import pytest
from kserve_diffusion.config import parse_config
from kserve_diffusion.errors import ConfigError


def test_speed_config() -> None:
    assert parse_config(["--compile", "regional"]).warmup is True  # compiling needs the warm-up
    assert parse_config([]).warmup is False and parse_config([]).compile == "none"
    assert parse_config(["--encode_threads", "0"]).encode_threads == 0
    with pytest.raises(ConfigError, match="--warmup false: --compile compiles during the warm-up"):
        parse_config(["--compile", "full", "--warmup", "false"])
    with pytest.raises(ConfigError, match="--compile: expected one of none, regional, full"):
        parse_config(["--compile", "max"])
    with pytest.raises(ConfigError, match="--encode_threads: expected at least 0"):
        parse_config(["--encode_threads", "-1"])
