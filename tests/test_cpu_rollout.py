"""The ``hf_cpu`` rollout server against the model it serves: log-probs, scripted answers, weight sync, budget."""

import asyncio
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from recipe.task.prompts import build_messages

pytestmark = pytest.mark.slow


def _config(
    scripted_every: int = 0,
    response_length: int = 12,
    prompt_length: int = 1400,
    max_new_tokens: int = 0,
    sync_weights: bool = True,
) -> SimpleNamespace:
    options = {"scripted_every": scripted_every, "max_new_tokens": max_new_tokens, "sync_weights": sync_weights}
    return SimpleNamespace(
        engine_kwargs={"hf_cpu": options},
        response_length=response_length,
        prompt_length=prompt_length,
    )


@pytest.fixture(scope="module")
def prompt(tiny_qwen_path):
    """A grounding prompt with one 840x840 image, tokenised by the model's processor as verl's dataset does.

    Returns the prompt's ids, its images and the processor's whole output for it (with ``mm_token_type_ids``).
    """
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_qwen_path)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (840, 840, 3), dtype=np.uint8))
    text = build_messages("grounding", "the dog")[0]["content"].replace("<image>", "")
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
    chat = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    full = processor(text=[chat], images=[image], return_tensors="pt")
    return full["input_ids"][0].tolist(), [image], dict(full)


def _server(tiny_qwen_path, config):
    from recipe.cpu.rollout import HFServer

    return HFServer(config, SimpleNamespace(path=tiny_qwen_path, local_path=None), replica_rank=0)


def _forward_log_probs(model, processed: dict, tokens: list[int], temperature: float = 1.0):
    """The reference: one teacher-forced forward of the model on the processor's whole output for the prompt (its
    ``mm_token_type_ids`` give Qwen2.5-VL its 3D M-RoPE positions, as verl's actor computes them), the response's
    tokens appended as text, log-softmax at each response position."""
    ids = processed["input_ids"][0].tolist()
    inputs = {key: value for key, value in processed.items() if key not in ("input_ids", "attention_mask")}
    inputs["mm_token_type_ids"] = torch.cat([processed["mm_token_type_ids"], torch.zeros(1, len(tokens), dtype=int)], 1)
    full = torch.tensor([ids + tokens])
    with torch.no_grad():
        logits = model(input_ids=full, attention_mask=torch.ones_like(full), **inputs).logits[0].float()
    rows = (logits[len(ids) - 1 : len(ids) - 1 + len(tokens)] / temperature).log_softmax(-1)
    return rows[torch.arange(len(tokens)), torch.tensor(tokens)]


def test_sampled_tokens_come_with_the_models_log_probs(tiny_qwen_path, prompt):
    ids, images, processed = prompt
    server = _server(tiny_qwen_path, _config())
    params = {"temperature": 1.0, "top_p": 1.0, "top_k": -1, "logprobs": True}
    out = asyncio.run(server.generate(ids, dict(params), "request-1", image_data=images))
    assert 1 <= len(out.token_ids) <= 12 and len(out.log_probs) == len(out.token_ids)
    expected = _forward_log_probs(server.model, processed, out.token_ids)
    torch.testing.assert_close(torch.tensor(out.log_probs), expected, atol=2e-4, rtol=1e-4)
    without = asyncio.run(server.generate(ids, {**params, "logprobs": False}, "request-1", image_data=images))
    assert without.log_probs is None


def test_the_server_sees_what_the_processor_gives_the_actor(tiny_qwen_path):
    """A two-image conversation (the workflow's overlay turn): the server's inputs are the processor's whole output,
    image for image and token for token, the ones verl's agent loop computes the actor's inputs and positions from."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_qwen_path)
    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(0, 255, (840, 600, 3), dtype=np.uint8)) for _ in range(2)]
    turn = [{"type": "image"}, {"type": "text", "text": "the dog"}]
    messages = [
        {"role": "user", "content": turn},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": turn},
    ]
    chat = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    expected = processor(text=[chat], images=images, return_tensors="pt")
    got = _server(tiny_qwen_path, _config())._model_inputs(expected["input_ids"][0].tolist(), images)
    assert set(got) == set(expected)
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, rtol=0, atol=0, msg=key)
    assert int((got["mm_token_type_ids"] == 1).sum()) == int(expected["image_grid_thw"].prod(-1).sum()) // 4


def test_scripted_answers_are_scored_by_the_model(tiny_qwen_path, prompt):
    from recipe.task.answer import parse_response

    ids, images, processed = prompt
    # The per-turn cap binds the sampled answer only: a scripted answer cut short would not parse.
    server = _server(tiny_qwen_path, _config(scripted_every=2, response_length=64, max_new_tokens=6))
    params = {"temperature": 0.7, "logprobs": True}
    first, second = (asyncio.run(server.generate(ids, dict(params), f"r{i}", image_data=images)) for i in range(2))
    assert server.counters == {"requests": 2, "scripted": 1, "weight_updates": 0, "weight_updates_skipped": 0}
    text = server.tokenizer.decode(second.token_ids, skip_special_tokens=True)
    assert parse_response(text).bbox_2d().ok and second.token_ids[-1] == server.tokenizer.eos_token_id
    expected = _forward_log_probs(server.model, processed, second.token_ids, temperature=0.7)
    torch.testing.assert_close(torch.tensor(second.log_probs), expected, atol=2e-4, rtol=1e-4)
    assert not parse_response(server.tokenizer.decode(first.token_ids)).format_ok  # the random model's own answer
    assert len(first.token_ids) <= 6 < len(second.token_ids)


def test_weight_sync_loads_the_actors_weights(tiny_qwen_path, prompt, tmp_path):
    from transformers import AutoModelForImageTextToText
    from verl.utils.model import convert_weight_keys

    from recipe.tiny_vlm import build_tiny_qwen2_5_vl

    server = _server(tiny_qwen_path, _config())
    other = AutoModelForImageTextToText.from_pretrained(build_tiny_qwen2_5_vl(tmp_path / "other", seed=1))
    sent = convert_weight_keys(dict(other.state_dict()), other)  # the checkpoint names verl's engine sends
    counters = asyncio.run(server.update_weights(sent, global_steps=3))
    assert counters["weight_updates"] == 1 and server.global_steps == 3
    for name, tensor in other.state_dict().items():
        torch.testing.assert_close(server.model.state_dict()[name], tensor)
    ids, images, _ = prompt
    out = asyncio.run(server.generate(ids, {"temperature": 1.0}, "r", image_data=images))
    assert out.extra_fields["global_steps"] == 3
    missing = dict(list(sent.items())[1:])
    with pytest.raises(RuntimeError, match="weight sync mismatch"):
        asyncio.run(server.update_weights(missing))


def test_samples_are_reproducible_and_distinct_under_one_request_id(tiny_qwen_path, prompt):
    """verl's full_determinism sends one request id (``det-0``) for every sample: the samples of a prompt still differ,
    and a fresh server (a resumed run) draws the same ones at the same step; another step draws others."""
    ids, images, _ = prompt
    params = {"temperature": 1.0, "logprobs": False}

    def draw(server, count: int) -> list[tuple[int, ...]]:
        runs = [asyncio.run(server.generate(ids, dict(params), "det-0", image_data=images)) for _ in range(count)]
        return [tuple(out.token_ids) for out in runs]

    first = _server(tiny_qwen_path, _config(sync_weights=False))
    samples = draw(first, 4)
    assert len(set(samples)) == 4
    again = _server(tiny_qwen_path, _config(sync_weights=False))
    assert draw(again, 4) == samples
    asyncio.run(again.update_weights({}, global_steps=1))  # sync off: only the step moves
    assert not set(draw(again, 4)) & set(samples)


def test_without_weight_sync_the_server_keeps_its_weights(tiny_qwen_path, tmp_path):
    from transformers import AutoModelForImageTextToText

    from recipe.tiny_vlm import build_tiny_qwen2_5_vl

    server = _server(tiny_qwen_path, _config(sync_weights=False))
    before = {name: tensor.clone() for name, tensor in server.model.state_dict().items()}
    other = AutoModelForImageTextToText.from_pretrained(build_tiny_qwen2_5_vl(tmp_path / "other", seed=1))
    counters = asyncio.run(server.update_weights(dict(other.state_dict()), global_steps=2))
    assert counters["weight_updates"] == 0 and counters["weight_updates_skipped"] == 1 and server.global_steps == 2
    for name, tensor in server.model.state_dict().items():
        assert torch.equal(tensor, before[name]), name


def test_token_budget_follows_vllms_rule():
    from recipe.cpu.rollout import max_new_tokens

    config = _config(response_length=100, prompt_length=1000)
    assert max_new_tokens(config, {}, 950) == 100
    assert max_new_tokens(config, {}, 1050) == 50  # the multi-turn budget: prompt + response <= both lengths
    assert max_new_tokens(config, {}, 1200) == 1
    assert max_new_tokens(config, {"max_tokens": 7}, 950) == 7


def test_unknown_options_are_refused():
    from recipe.cpu.rollout import HFRolloutOptions

    assert HFRolloutOptions.from_engine_kwargs({"vllm": {}}) == HFRolloutOptions()
    with pytest.raises(ValueError, match="scripted_evry"):
        HFRolloutOptions.from_engine_kwargs({"hf_cpu": {"scripted_evry": 2}})
