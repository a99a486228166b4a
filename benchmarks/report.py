"""Benchmark results to files: JSON (everything), a Markdown table and a matplotlib chart, each with the
machine, the library versions and the date."""

from __future__ import annotations

import datetime
import json
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil
import torch

PACKAGES = ("kserve-diffusion", "kserve", "diffusers", "transformers", "torch", "pillow", "imageio-ffmpeg")


def machine() -> dict[str, Any]:
    """Where the figures were taken."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cpu_cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "versions": {name: _version(name) for name in PACKAGES},
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    return info


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "-"


def _table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row.get(column, "")) for column in columns) + " |" for row in rows]
    return "\n".join(lines)


def markdown(title: str, results: dict[str, Any]) -> str:
    """The results as Markdown: the machine, then one table per section."""
    about = results["machine"]
    versions = ", ".join(f"{name} {version}" for name, version in about["versions"].items())
    parts = [
        f"# {title}",
        "",
        f"Taken {about['date']} on {about['cpu']} ({about['cpu_cores']} cores, {about['memory_gib']} GiB)"
        + (f", GPU {about['gpu']}" if about["gpu"] else ", no GPU")
        + f"; Python {about['python']}; {versions}.",
    ]
    for section in results["sections"]:
        parts += ["", f"## {section['title']}", ""]
        if section.get("note"):
            parts += [section["note"], ""]
        parts.append(_table(section["rows"]))
    return "\n".join(parts) + "\n"


def write(name: str, title: str, results: dict[str, Any], out: Path, chart: Any) -> list[Path]:
    """Write `name`.json, `name`.md and `name`.png (drawn by `chart(results, path)`) under `out`."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.json", out / f"{name}.md", out / f"{name}.png"]
    paths[0].write_text(json.dumps(results, indent=2) + "\n")
    paths[1].write_text(markdown(title, results))
    chart(results, paths[2])
    return paths
