"""Tokenizers generated in memory (nothing downloaded): a byte-level CLIP tokenizer and a character-level T5 one."""

from __future__ import annotations

from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
from transformers import CLIPTokenizer, PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import bytes_to_unicode


def build_tokenizer() -> CLIPTokenizer:
    """A byte-level CLIP tokenizer with no merges: every character is a token."""
    alphabet = list(bytes_to_unicode().values())
    tokens = alphabet + [f"{char}</w>" for char in alphabet] + ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={token: i for i, token in enumerate(tokens)}, merges=[], model_max_length=77)


WAN_MAX_TOKENS = 512  # WanPipeline's max_sequence_length


def build_t5_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level tokenizer with T5's special tokens (pad 0, eos 1, unk 2), built in memory."""
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{chr(c): i + 3 for i, c in enumerate(range(32, 127))}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=WAN_MAX_TOKENS,
    )
