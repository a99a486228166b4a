"""Entry point: parse the configuration, load the model once, serve it with kserve.ModelServer.

diffusers, transformers and torch are imported only once the flags are read and the job store answers:
`--help`, a mistyped flag or an unreachable Redis answer in seconds, not after the ten seconds those
imports take.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from kserve import logging as kserve_logging
from kserve.logging import logger

from . import startup_notes
from .config import parse_config
from .errors import ConfigError
from .jobs.stores import open_store
from .marks import open_marks
from .outputs.s3 import open_output_store


def main(argv: Sequence[str] | None = None) -> int:
    """Run the server; returns the process exit code."""
    try:
        config = parse_config(argv)
        if config.configure_logging:
            kserve_logging.configure_logging(config.log_config_file)
        startup_notes.install()  # before the imports whose warnings it rewrites
        store = open_store(config)  # an unreachable Redis stops the start here, before the model loads
        outputs = open_output_store(config.output_store, config.model_name, config.output_url_ttl_seconds)
        marks = open_marks(
            config.provenance, config.c2pa_cert, config.c2pa_key, config.c2pa_tsa_url, config.c2pa_include_parameters
        )
        from diffusers.utils import logging as diffusers_logging
        from transformers.utils import logging as transformers_logging

        from .pipelines import resolve_model_type, serving_family
        from .runtime.service import GenerationService
        from .server.app import serve

        # Progress bars garble the one-line-per-event server log.
        diffusers_logging.disable_progress_bar()
        transformers_logging.disable_progress_bar()
        config = resolve_model_type(config)  # --model_type auto: the family the folder holds
        service = GenerationService(config, serving_family(config), outputs, marks)
        service.load()
    except ConfigError as exc:
        logger.error("startup failed: %s", exc)
        print(f"kserve-diffusion: error: {exc}", file=sys.stderr)
        return 2
    serve(service, store)
    return 0


if __name__ == "__main__":
    sys.exit(main())
