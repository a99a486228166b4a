"""Entry point: parse the configuration, load the model once, serve it with kserve.ModelServer."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from diffusers.utils import logging as diffusers_logging
from fastapi import Request
from fastapi.responses import JSONResponse
from kserve import ModelServer
from kserve import logging as kserve_logging
from kserve.logging import logger
from kserve.model_server import app
from transformers.utils import logging as transformers_logging

from .binary_inputs import Base64BinaryInputs
from .config import parse_config
from .errors import ConfigError, GenerationFailed, RequestError
from .families import serving_family
from .model import DiffusionModel
from .schemas import FILE_FIELDS


async def _generation_failed(_: Request, exc: Exception) -> JSONResponse:
    # KServe's generic handler would prefix the exception's class name; keep the answer short.
    return JSONResponse(status_code=500, content={"error": str(exc)})


async def _request_rejected(_: Request, exc: Exception) -> JSONResponse:
    # KServe's handler logs a traceback for every 400; one line says all there is to say.
    logger.warning("rejected request: %s", exc)
    return JSONResponse(status_code=400, content={"error": str(exc)})


def main(argv: Sequence[str] | None = None) -> int:
    """Run the server; returns the process exit code."""
    try:
        config = parse_config(argv)
        if config.configure_logging:
            kserve_logging.configure_logging(config.log_config_file)
        # Progress bars garble the one-line-per-event server log.
        diffusers_logging.disable_progress_bar()
        transformers_logging.disable_progress_bar()
        model = DiffusionModel(config, serving_family(config))
        model.load()
    except ConfigError as exc:
        logger.error("startup failed: %s", exc)
        print(f"kserve-diffusion: error: {exc}", file=sys.stderr)
        return 2
    app.add_exception_handler(GenerationFailed, _generation_failed)
    app.add_exception_handler(RequestError, _request_rejected)
    app.add_middleware(Base64BinaryInputs, tensors=FILE_FIELDS)
    ModelServer(**config.model_server).start([model])
    return 0


if __name__ == "__main__":
    sys.exit(main())
