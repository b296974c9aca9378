"""verl agent loops run in a test: built as verl's agent-loop worker builds them, answered by a scripted server."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import hydra
from omegaconf import DictConfig
from verl.experimental.agent_loop.agent_loop import DictConfigWrap, ToolListWrap, _agent_loop_registry
from verl.utils.dataset.rl_dataset import RLHFDataset
from verl.workers.rollout.replica import TokenOutput


def instantiate_agent_loop(config: DictConfig, agent_name: str, server: Any, tokenizer: Any, processor: Any) -> Any:
    """A verl agent loop built the way verl's agent-loop worker builds one, around any ``server`` with ``generate``.

    Call it inside a running event loop: verl's loops capture it at construction.
    """
    return hydra.utils.instantiate(
        _agent_loop_registry[agent_name],
        trainer_config=DictConfigWrap(config),
        server_manager=server,
        tokenizer=tokenizer,
        processor=processor,
        hf_model_type="qwen2_5_vl",
        dataset_cls=RLHFDataset,
        data_config=DictConfigWrap(config.data),
        tools=ToolListWrap([]),
    )


class ScriptedServer:
    """Stands in for verl's LLM server: call ``n`` answers ``texts[n]`` (the last text thereafter), ending with EOS.

    Every call is recorded in ``calls`` as ``{"request_id", "prompt_ids", "images", "sampling_params"}``, copied,
    because the multi-turn loops extend their lists in place between turns. Asked for log-probs, call ``n`` (from 1)
    gives each of its tokens the log-prob ``-n``; with ``versioned``, it reports weights of global step ``n`` as verl's
    server manager does (``min_global_steps`` = ``max_global_steps`` = ``n``).
    """

    def __init__(self, tokenizer: Any, texts: str | Sequence[str], versioned: bool = False):
        self.tokenizer = tokenizer
        self.texts = [texts] if isinstance(texts, str) else list(texts)
        self.versioned = versioned
        self.calls: list[dict[str, Any]] = []

    async def generate(
        self, request_id: str, *, prompt_ids: list[int], sampling_params: dict, image_data: list | None = None, **_
    ) -> TokenOutput:
        self.calls.append(
            {
                "request_id": request_id,
                "prompt_ids": list(prompt_ids),
                "images": None if image_data is None else list(image_data),
                "sampling_params": dict(sampling_params),
            }
        )
        n = len(self.calls)
        tokens = [*self.tokenizer.encode(self.texts[min(n, len(self.texts)) - 1], add_special_tokens=False)]
        tokens.append(self.tokenizer.eos_token_id)
        return TokenOutput(
            token_ids=tokens,
            log_probs=[-float(n)] * len(tokens) if sampling_params.get("logprobs") else None,
            extra_fields={"min_global_steps": n, "max_global_steps": n} if self.versioned else {},
        )
