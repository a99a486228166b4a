"""Tokenizers generated in memory (nothing downloaded): byte-level CLIP, Qwen and Mistral tokenizers (the last two
with chat templates) and a character-level T5 one."""

from __future__ import annotations

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import CLIPTokenizer, PreTrainedTokenizerFast, Qwen2TokenizerFast
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


# Qwen2/Qwen3 tokenizers (Qwen-Image, FLUX.2 [klein], Z-Image): byte-level BPE with no merges, Qwen's special
# tokens (the picture markers Qwen2-VL's processor expands) and a chat template of Qwen's shape.
QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'text' %}{{ part['text'] }}{% else %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# FLUX.2 [dev]'s Mistral tokenizer: the special tokens its chat template writes, and [IMG] for pictures.
MISTRAL_SPECIAL_TOKENS = (
    "<unk>",
    "<s>",
    "</s>",
    "<pad>",
    "[INST]",
    "[/INST]",
    "[SYSTEM_PROMPT]",
    "[/SYSTEM_PROMPT]",
    "[IMG]",
    "[IMG_BREAK]",
    "[IMG_END]",
)
MISTRAL_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['content'] is string %}{% set text = message['content'] %}{% else %}"
    "{% set text = message['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') | join('') %}"
    "{% endif %}{% if message['role'] == 'system' %}[SYSTEM_PROMPT]{{ text }}[/SYSTEM_PROMPT]"
    "{% elif message['role'] == 'user' %}[INST]{{ text }}[/INST]{% else %}{{ text }}{{ eos_token }}{% endif %}"
    "{% endfor %}"
)


def _byte_alphabet() -> list[str]:
    return list(bytes_to_unicode().values())


def build_qwen_tokenizer() -> Qwen2TokenizerFast:
    """A byte-level Qwen2 tokenizer (every byte a token) with Qwen's special tokens and chat template."""
    vocab = {char: index for index, char in enumerate(_byte_alphabet())}
    for token in QWEN_SPECIAL_TOKENS:
        vocab[token] = len(vocab)
    tokenizer = Qwen2TokenizerFast(vocab=vocab, merges=[], model_max_length=32768)
    tokenizer.add_special_tokens({"additional_special_tokens": list(QWEN_SPECIAL_TOKENS[1:])})
    tokenizer.chat_template = QWEN_CHAT_TEMPLATE
    return tokenizer


def build_mistral_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer with Mistral's special tokens and an instruct chat template (FLUX.2 [dev])."""
    vocab = {token: index for index, token in enumerate(MISTRAL_SPECIAL_TOKENS)}
    for char in _byte_alphabet():
        vocab[char] = len(vocab)
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        model_max_length=32768,
        additional_special_tokens=list(MISTRAL_SPECIAL_TOKENS[4:]),
        chat_template=MISTRAL_CHAT_TEMPLATE,
    )
