"""Text and picture processors this server loads itself instead of the classes a model_index.json names.

transformers' Qwen2VLProcessor (Qwen-Image-Edit) always builds a video processor, and PixtralProcessor (FLUX.2
[dev]'s `tokenizer`) an image processor, and both refuse to exist without torchvision. This server never sends
them a video, and FLUX.2 reads only text through its processor (caption upsampling, the one use of its pictures,
is not offered). So the same files load here into what the pipelines call: a Qwen2-VL processor for pictures only,
and FLUX.2's tokenizer with its chat template. A CUDA image with torchvision and a CPU or slim one without it
then load the same way, from the same folders.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from transformers import AutoTokenizer, Qwen2VLImageProcessor, Qwen2VLProcessor

from ..errors import ConfigError

ComponentLoader = Callable[[str, str, dict[str, Any]], Any]


class PicturesOnlyQwen2VLProcessor(Qwen2VLProcessor):
    """Qwen2VLProcessor without its video part: text and pictures, which is all the Qwen-Image-Edit pipelines send."""

    def __init__(self, image_processor: Any = None, tokenizer: Any = None, chat_template: Any = None, **kwargs: Any):
        """Qwen2VLProcessor's attributes, with no video processor (transformers' ProcessorMixin takes the rest)."""
        self.image_token = getattr(tokenizer, "image_token", "<|image_pad|>")
        self.video_token = getattr(tokenizer, "video_token", "<|video_pad|>")
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
        super(Qwen2VLProcessor, self).__init__(image_processor, tokenizer, chat_template=chat_template)
        self.video_processor = None


def qwen_vl_processor(model_id: str, subfolder: str, options: dict[str, Any]) -> PicturesOnlyQwen2VLProcessor:
    """Qwen-Image-Edit's `processor` folder as a pictures-only Qwen2-VL processor."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_id, subfolder=subfolder, **options)
        pictures = Qwen2VLImageProcessor.from_pretrained(model_id, subfolder=subfolder, **options)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--model_id: could not load the {subfolder} of {model_id}: {exc}") from exc
    return PicturesOnlyQwen2VLProcessor(pictures, tokenizer, chat_template=tokenizer.chat_template)


def flux2_text_tokenizer(model_id: str, subfolder: str, options: dict[str, Any]) -> Any:
    """FLUX.2's `tokenizer` folder (a Mistral processor for [dev], a Qwen tokenizer for [klein]) as its tokenizer
    with the chat template: the pipelines only format and tokenize text through it."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_id, subfolder=subfolder, **options)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--model_id: could not load the {subfolder} of {model_id}: {exc}") from exc
    if tokenizer.chat_template is None:
        raise ConfigError(f"--model_id: the {subfolder} of {model_id} has no chat template, which FLUX.2 prompts need")
    return tokenizer
