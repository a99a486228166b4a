"""docs/configuration.md, generated from the declared settings: `python -m kserve_diffusion.config.reference`.

A test regenerates the page and fails when the committed one differs, and checks it against --help.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kserve.model_server import parser as kserve_parser

from .parsing import ENV_FILE_HELP, MODEL_SERVER_FLAGS, TOKEN_ENV_VARS
from .settings import settings

INTRO = """# Configuration

Every setting is a flag, an environment variable and a `.env` entry (read from the working
directory, or `--env_file PATH`). Precedence: command line > environment > `.env` > default. Each
flag may also be spelled with dashes (`--model-type`). A boolean flag given alone means true
(`--vae_tiling`); `--vae_tiling false`, `--vae_tiling=false` and `VAE_TILING=0` turn it off
(true/false/1/0/yes/no/on/off). A misspelled flag or a value out of range is a startup error naming
the flag (or variable) and what is allowed; `kserve-diffusion --help` prints the same table.

This page is generated from the declarations in `kserve_diffusion/config/settings.py`
(`make docs` rewrites it); a test fails when it and the code disagree.
"""

DEVICE_NOTES = """
Device modes: `cuda` keeps everything on the GPU (fastest); `enable_model_cpu_offload` moves one
whole model at a time to the GPU (the seed project ran SDXL base this way in 8 GB of VRAM);
`enable_sequential_cpu_offload` moves layer by layer (least VRAM, much slower). Memory per mode and
model is in [operations.md](operations.md#memory).
"""


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def settings_table() -> str:
    """The markdown table of our settings."""
    rows = ["| flag | env | default | allowed | meaning |", "|---|---|---|---|---|"]
    for item in settings():
        cells = (item.describe_default(), item.describe_allowed() or "text", item.help)
        rows.append(f"| `{item.flag}` | `{item.env}` | " + " | ".join(_cell(text) for text in cells) + " |")
    rows.append(f"| `--env_file` | (none) | .env | a path | {ENV_FILE_HELP} |")
    tokens = " or ".join(f"`{name}`" for name in TOKEN_ENV_VARS)
    rows.append(f"| (no flag) | {tokens} | none | text | token for gated hub downloads (FLUX.1-dev); never logged |")
    return "\n".join(rows)


def kserve_table() -> str:
    """The KServe flags this server passes on to kserve.ModelServer, from KServe's own parser."""
    actions = {action.dest: action for action in kserve_parser._actions}  # noqa: SLF001 - argparse has no public API
    rows = ["| flag | default | meaning |", "|---|---|---|"]
    for name in ("model_name", "workers", *MODEL_SERVER_FLAGS, "configure_logging", "log_config_file"):
        action = actions[name]
        default = action.default if action.default not in (None, argparse.SUPPRESS) else "none"
        rows.append(f"| `--{name}` | {_cell(str(default))} | {_cell(' '.join((action.help or '').split()))} |")
    return "\n".join(rows)


def render() -> str:
    """The whole page."""
    return (
        f"{INTRO}\n## kserve-diffusion settings\n\n{settings_table()}\n{DEVICE_NOTES}\n"
        "## KServe settings\n\nThe standard KServe flags this server uses (flags only, no environment variables). "
        "`--workers` must stay 1: every worker process would load its own copy of the model.\n\n"
        f"{kserve_table()}\n"
    )


def main(argv: list[str] | None = None) -> int:
    """Write the page to the path given (default: print it)."""
    args = argv if argv is not None else sys.argv[1:]
    if args:
        Path(args[0]).write_text(render())
    else:
        print(render(), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
