"""Known, harmless start-up messages of the libraries underneath, each told once in our own words.

An operator reading pod logs takes torchao's "Failed to load ... Could not load this library" or a
deprecation traceback-looking line for a broken image. Each entry below names the logger that emits a
message, a piece of its text, and what it means here; the first such record is rewritten into our line
(at INFO), later ones are dropped. Any other record passes unchanged. `install()` runs before diffusers,
transformers and torchao are imported (the messages come at import time).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field


@dataclass
class Note:
    """One library message (`logger`, containing `text`) and what we say instead (None: nothing)."""

    logger: str
    text: str
    says: str | None
    told: bool = field(default=False, compare=False)

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the first matching record into our words; drop the ones after it."""
        if self.text not in record.getMessage():
            return True
        if self.told or self.says is None:
            return False
        self.told = True
        record.msg, record.args = self.says, ()
        record.levelno, record.levelname = logging.INFO, "INFO"
        return True


NOTES = (
    Note(
        "torchao",
        "Failed to load",
        "note: torchao's optional prebuilt kernels (MX formats, Hopper cutlass) do not load in this environment; "
        "--quantize int8/fp8/nf4 do not use them",
    ),
    Note(
        "diffusers.quantizers.torchao.torchao_quantizer",
        "Unable to import `torchao` Tensor objects",
        "note: checkpoints saved already quantized by torchao cannot be read here; --quantize quantizes while loading",
    ),
    # torchao 0.18 registers two enums with torch.compile the way PyTorch 2.13 deprecates: nothing to act on.
    Note("torch.utils._pytree", "is an Enum subclass", None),
    Note(
        "transformers.utils.import_utils",
        "requires torchvision (not installed)",
        "note: image processors use their PIL implementation (torchvision is not installed; the results are the same)",
    ),
    Note(
        "kserve",
        "OpenAI endpoints not registered",
        "OpenAI Images and Videos routes are served under /openai/v1 (KServe's own OpenAI routes are for "
        "language models and stay off)",
    ),
    Note("kserve", "Time series endpoints not registered", None),
)


def install() -> None:
    """Attach the notes to their loggers; silence FastAPI's deprecation of the ORJSONResponse that KServe's v1
    routes answer with (a KServe matter, logged on the first request otherwise)."""
    for note in NOTES:
        logger = logging.getLogger(note.logger)
        if note.filter not in logger.filters:
            logger.addFilter(note.filter)
    warnings.filterwarnings("ignore", message=r".*ORJSONResponse.*")
