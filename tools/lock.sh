#!/usr/bin/env bash
# make lock: resolve pyproject.toml's ranges (and requirements-notebook.txt's) in fresh environments and
# write what pip chose to constraints.txt and constraints-notebook.txt. Run `make test` after it.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

header() {
  echo "# Tested versions, written by \`make lock\` on $(date -u +%Y-%m-%d) with $($PYTHON --version)."
  echo "# make demo, make test and the Containerfile install with -c $1; edit pyproject.toml (or requirements-notebook.txt), then make lock."
}

$PYTHON -m venv "$scratch/server"
"$scratch/server/bin/python" -m pip install -q --upgrade pip
"$scratch/server/bin/python" -m pip install -q torch==2.13.0
"$scratch/server/bin/python" -m pip install -q -e ".[test]"
"$scratch/server/bin/python" -m pip install -q --no-deps invisible-watermark  # as make install does
# torch's local label (+cpu, +cu128) depends on the machine; the release is what is pinned.
{ header constraints.txt; "$scratch/server/bin/python" -m pip freeze --exclude-editable | sed -E 's/^(torch==[^+]+)\+.*/\1/' | grep -v '^nvidia-\|^triton=='; } > constraints.txt

$PYTHON -m venv "$scratch/notebook"
"$scratch/notebook/bin/python" -m pip install -q --upgrade pip
"$scratch/notebook/bin/python" -m pip install -q -r requirements-notebook.txt
{ header constraints-notebook.txt; "$scratch/notebook/bin/python" -m pip freeze; } > constraints-notebook.txt
echo "wrote constraints.txt ($(grep -vc '^#' constraints.txt) packages) and constraints-notebook.txt ($(grep -vc '^#' constraints-notebook.txt))"
