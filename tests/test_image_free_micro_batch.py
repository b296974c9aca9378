"""A Qwen2.5-VL micro-batch without images trains: verl's forward crashes on it, the project's fix does not.

verl's partitioning can put text-only padding samples (what replaces a failed rollout group) into one micro-batch;
verl's patched Qwen2-VL forward then runs a placeholder vision pass that fails on transformers 5.
"""

import pytest
import torch

from recipe.verl_runtime import verl_workarounds

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model(tiny_qwen_path):
    from transformers import AutoModelForImageTextToText
    from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl as qwen2_5_vl
    from transformers.models.qwen2_vl import modeling_qwen2_vl as qwen2_vl
    from verl.models.transformers.monkey_patch import apply_monkey_patch

    model = AutoModelForImageTextToText.from_pretrained(tiny_qwen_path, attn_implementation="sdpa")
    with pytest.MonkeyPatch.context() as patches:
        # apply_monkey_patch replaces these classes' forwards in the whole process: put them back after this module
        # (transformers' generate refuses the processor's mm_token_type_ids with verl's forward).
        for cls in (qwen2_5_vl.Qwen2_5_VLForConditionalGeneration, qwen2_5_vl.Qwen2_5_VLModel):
            patches.setattr(cls, "forward", cls.forward)
        for cls in (qwen2_vl.Qwen2VLForConditionalGeneration, qwen2_vl.Qwen2VLModel):
            patches.setattr(cls, "forward", cls.forward)
        apply_monkey_patch(model, use_remove_padding=False)  # what verl's FSDP engine does before training
        yield model


def _text_only_batch(model) -> dict:
    input_ids = torch.randint(0, 1000, (2, 12))
    # verl's layout for Qwen2.5-VL: text positions stacked on the 3 mrope rows; without images all four are aranges.
    position_ids = torch.arange(12).expand(4, 2, 12)
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "position_ids": position_ids}


def test_verls_own_forward_crashes_on_an_image_free_micro_batch(model, monkeypatch):
    from verl.models.transformers import qwen2_vl

    original = verl_workarounds._REPLACED["verl.models.transformers.qwen2_vl:_get_input_embeds"]
    monkeypatch.setattr(qwen2_vl, "_get_input_embeds", original)
    with pytest.raises(AttributeError, match="has no attribute 'mean'"):
        model(**_text_only_batch(model))


def test_the_fixed_forward_trains_every_vision_parameter_and_changes_no_logit(model, monkeypatch):
    from verl.models.transformers import qwen2_vl

    monkeypatch.setattr(qwen2_vl, "_get_input_embeds", verl_workarounds.input_embeds_image_free_safe)
    batch = _text_only_batch(model)
    model.zero_grad(set_to_none=True)
    logits = model(**batch).logits
    logits.float().logsumexp(-1).mean().backward()
    # Every vision parameter is in the graph (FSDP's reduce-scatter expects a gradient from each), with zero weight.
    grads = [param.grad for param in model.model.visual.parameters()]
    assert all(grad is not None for grad in grads) and all(float(grad.abs().max()) == 0.0 for grad in grads)
    # The language model sees exactly its token embeddings: the reference is the text model fed those embeddings.
    with torch.no_grad():
        embeds = model.get_input_embeddings()(batch["input_ids"])
        hidden = model.model.language_model(
            inputs_embeds=embeds, attention_mask=batch["attention_mask"], position_ids=batch["position_ids"]
        )
        expected = model.lm_head(hidden.last_hidden_state)
    torch.testing.assert_close(logits.detach(), expected, atol=1e-5, rtol=1e-5)
