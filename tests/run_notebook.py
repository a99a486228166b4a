"""Execute a notebook with nbclient and print what it displayed, as JSON.

Run by the notebook's own environment (.venv-notebook: its IPython needs a psutil that kserve's pins
exclude), not by the test environment: `python tests/run_notebook.py NOTEBOOK`. Exit 1 when a cell fails.
"""

from __future__ import annotations

import json
import sys

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError


def main(path: str) -> int:
    """Run every cell in order; print the count of each output MIME type and the HTML shown."""
    notebook = nbformat.read(path, as_version=4)
    try:
        NotebookClient(notebook, timeout=600, kernel_name="python3").execute()
    except CellExecutionError as error:
        print(str(error)[-4000:], file=sys.stderr)
        return 1
    mime_counts: dict[str, int] = {}
    html: list[str] = []
    text: list[str] = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream":
                text.append(output["text"])
            for mime, value in output.get("data", {}).items():
                mime_counts[mime] = mime_counts.get(mime, 0) + 1
                if mime == "text/html":
                    html.append(value[:200])
    print(json.dumps({"mime_counts": mime_counts, "html": html, "text": "".join(text)}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
