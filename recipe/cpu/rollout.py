"""verl rollout backend ``hf_cpu``: token-in/token-out generation with transformers on the CPU.

It mirrors verl's vLLM backend in three pieces:

- :class:`HFServer`, the Ray actor the agent loops' ``LLMServerClient`` calls (``generate`` -> ``TokenOutput``),
  holding its own copy of the policy;
- :class:`HFReplica` (``RolloutReplicaRegistry`` name ``hf_cpu``), which starts one server per replica;
- :class:`HFServerAdapter`, the hybrid FSDP worker's ``BaseRollout``: verl's naive weight sync hands it the actor's
  full tensors after every update, and the replica's first rank sends them to the server.

Options live in ``actor_rollout_ref.rollout.engine_kwargs.hf_cpu`` (:class:`HFRolloutOptions`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import zlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import ray
import torch
from verl.workers.rollout.base import BaseRollout
from verl.workers.rollout.replica import RolloutReplica, TokenOutput

from recipe.cpu.scripted import scripted_answer
from recipe.task.coordinates import model_coordinates

logger = logging.getLogger(__name__)

ROLLOUT_NAME = "hf_cpu"


@dataclass(frozen=True)
class HFRolloutOptions:
    """``actor_rollout_ref.rollout.engine_kwargs.hf_cpu``.

    Attributes:
        scripted_every: Answer every n-th request for the same prompt with a random well-formed answer of the task
            the prompt asks (:mod:`recipe.cpu.scripted`), with the policy's own log-probs. Counting per prompt puts
            scripted and generated answers in every group of ``rollout.n >= n`` samples, so a random model's
            rewards vary within each group and GRPO's advantages are non-zero. 0 (the default) generates every
            answer; preflight refuses any other value off the CPU platform.
        sync_weights: Load the actor's weights after every update (the default). False keeps the weights the server
            started with: a control run whose policy never reaches the rollout, which must not learn
            (``make bench-learn``); the skipped loads are counted (``weight_updates_skipped``).
        max_new_tokens: At most this many sampled tokens per request (0: the response budget alone; scripted answers
            are never cut). A random model
            rarely samples its end token, so without a cap every turn of a long response budget runs to the end.
    """

    scripted_every: int = 0
    sync_weights: bool = True
    max_new_tokens: int = 0

    @classmethod
    def from_engine_kwargs(cls, engine_kwargs: dict | None) -> HFRolloutOptions:
        options = dict((engine_kwargs or {}).get(ROLLOUT_NAME) or {})
        unknown = set(options) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown engine_kwargs.{ROLLOUT_NAME} keys {sorted(unknown)}")
        return cls(**options)


def server_name(replica_rank: int) -> str:
    return f"{ROLLOUT_NAME}_server_{replica_rank}"


def sampling_seed(request_id: str, global_steps: int | None, prompt_key: int, occurrence: int) -> int:
    """The sampler's seed of one request: its id, the weights' step, its prompt and how often this step asked it.

    A random request id (verl's default) makes every sample random. Under ``rollout.full_determinism`` verl 0.9.1's V1
    agent loops send the same id for every request (``det-0``: the V1 manager never sets the ``priority`` the id is
    built from), so the id alone would give all ``rollout.n`` samples of a prompt one seed and GRPO no advantage;
    the prompt and its occurrence within the step tell them apart, and the step moves the seeds on. The k-th
    request for a prompt gets the same seed whichever sample sends it, so a step's samples are the same multiset in
    every run, and a resumed run's (which restarts the server) too.
    """
    return zlib.crc32(f"{request_id}/{global_steps}/{prompt_key}/{occurrence}".encode())  # hash() is salted


def token_types(ids: torch.Tensor, processor: Any, model_config: Any) -> dict[str, torch.Tensor]:
    """``mm_token_type_ids`` of ``ids`` (1 at image tokens, 2 at video tokens), where the processor has them.

    transformers >= 5.3 gives Qwen2.5-VL its 3D M-RoPE positions only when they are passed (else plain 1D
    positions); verl's actor always computes the 3D ones, so without them a forward pass is another policy's.
    """
    if "mm_token_type_ids" not in processor.model_input_names:
        return {}
    types = torch.zeros_like(ids)
    types[ids == model_config.image_token_id] = 1
    types[ids == model_config.video_token_id] = 2
    return {"mm_token_type_ids": types}


def max_new_tokens(config: Any, sampling_params: dict[str, Any], prompt_length: int) -> int:
    """vLLM's rule: an explicit ``max_tokens``, else the response budget left after the prompt; at least 1."""
    requested = sampling_params.get("max_tokens") or sampling_params.get("max_new_tokens")
    if not requested:
        requested = min(config.response_length, config.prompt_length + config.response_length - prompt_length)
    return max(1, int(requested))


class HFServer:
    """Generates one request at a time with ``model.generate``; loads new weights between steps.

    Args:
        config: verl's ``RolloutConfig``.
        model_config: verl's ``HFModelConfig`` (the policy's path).
        replica_rank: This replica's index.
    """

    def __init__(self, config: Any, model_config: Any, replica_rank: int):
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.config, self.replica_rank = config, replica_rank
        self.options = HFRolloutOptions.from_engine_kwargs(config.engine_kwargs)
        path = getattr(model_config, "local_path", None) or model_config.path
        self.processor = AutoProcessor.from_pretrained(path)
        self.tokenizer = self.processor.tokenizer
        self.coordinates = model_coordinates(path)
        self.model = AutoModelForImageTextToText.from_pretrained(
            path, dtype=torch.float32, attn_implementation="sdpa"
        ).eval()
        self.lock = asyncio.Lock()
        self.global_steps: int | None = None
        self.counters = {"requests": 0, "scripted": 0, "weight_updates": 0, "weight_updates_skipped": 0}
        self.prompt_requests: Counter[tuple[int | None, int]] = Counter()  # by (weights' step, prompt)

    def _model_inputs(self, prompt_ids: list[int], image_data: list | None) -> dict[str, torch.Tensor]:
        inputs = {"input_ids": torch.tensor([prompt_ids])}
        if image_data:
            inputs.update(self.processor.image_processor(images=image_data, return_tensors="pt"))
            inputs.update(self._token_types(inputs["input_ids"]))
        inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
        return inputs

    def _token_types(self, ids: torch.Tensor) -> dict[str, torch.Tensor]:
        return token_types(ids, self.processor, self.model.config)

    def _sample(self, inputs: dict[str, torch.Tensor], sampling_params: dict, budget: int) -> tuple[list[int], Any]:
        temperature = float(sampling_params.get("temperature", 1.0))
        kwargs: dict[str, Any] = {"max_new_tokens": budget, "do_sample": temperature > 0}
        if temperature > 0:
            top_k = int(sampling_params.get("top_k", -1))
            kwargs.update(
                temperature=temperature, top_p=float(sampling_params.get("top_p", 1.0)), top_k=top_k if top_k > 0 else 0
            )
        if float(sampling_params.get("repetition_penalty", 1.0)) != 1.0:
            kwargs["repetition_penalty"] = float(sampling_params["repetition_penalty"])
        with torch.inference_mode():
            out = self.model.generate(**inputs, output_scores=True, return_dict_in_generate=True, **kwargs)
        tokens = out.sequences[0, inputs["input_ids"].shape[1] :].tolist()
        # The scores are the processed logits (temperature, top-k/p applied), as vLLM's processed_logprobs.
        steps = zip(out.scores, tokens, strict=True)
        return tokens, [score[0].float().log_softmax(-1)[token].item() for score, token in steps]

    def _teacher_forced(self, inputs: dict[str, torch.Tensor], tokens: list[int], temperature: float) -> list[float]:
        ids = torch.cat([inputs["input_ids"], torch.tensor([tokens])], 1)
        extra = {key: value for key, value in inputs.items() if key not in ("input_ids", "attention_mask")}
        if "mm_token_type_ids" in extra:
            extra.update(self._token_types(ids))
        with torch.inference_mode():
            logits = self.model(input_ids=ids, attention_mask=torch.ones_like(ids), **extra).logits[0]
        start = inputs["input_ids"].shape[1] - 1  # the logit at position i predicts token i + 1
        predictive = (logits[start : start + len(tokens)].float() / max(temperature, 1e-6)).log_softmax(-1)
        return predictive.gather(-1, torch.tensor(tokens)[:, None])[:, 0].tolist()

    def _generate(self, request_id: str, prompt_ids: list[int], sampling_params: dict, image_data) -> TokenOutput:
        inputs = self._model_inputs(prompt_ids, image_data)
        budget = max_new_tokens(self.config, sampling_params, len(prompt_ids))
        self.counters["requests"] += 1
        prompt_key = zlib.crc32(np.asarray(prompt_ids, dtype=np.int64).tobytes())
        self.prompt_requests[self.global_steps, prompt_key] += 1
        occurrence = self.prompt_requests[self.global_steps, prompt_key]
        seed = sampling_seed(request_id, self.global_steps, prompt_key, occurrence)
        torch.manual_seed(seed)
        every = self.options.scripted_every
        text = None
        if every and occurrence % every == 0:
            rng = np.random.default_rng(seed)
            text = scripted_answer(self.tokenizer.decode(prompt_ids), rng, self.coordinates)
        if text is None:
            # The cap is for the random model, which rarely ends an answer; a scripted answer is never cut short.
            cap = min(budget, self.options.max_new_tokens) if self.options.max_new_tokens else budget
            tokens, log_probs = self._sample(inputs, sampling_params, cap)
        else:
            self.counters["scripted"] += 1
            tokens = [*self.tokenizer.encode(text, add_special_tokens=False), self.tokenizer.eos_token_id][:budget]
            log_probs = self._teacher_forced(inputs, tokens, float(sampling_params.get("temperature", 1.0)))
        return TokenOutput(
            token_ids=tokens,
            log_probs=log_probs if sampling_params.get("logprobs") else None,
            stop_reason="completed",
            extra_fields={"global_steps": self.global_steps},
        )

    async def generate(
        self,
        prompt_ids: list[int],
        sampling_params: dict[str, Any],
        request_id: str,
        image_data: list | None = None,
        video_data: list | None = None,
        **_: Any,
    ) -> TokenOutput:
        if video_data:
            raise ValueError(f"the {ROLLOUT_NAME} rollout takes images only")
        async with self.lock:  # the CPU runs one generation at a time; others queue here
            return await asyncio.to_thread(self._generate, request_id, list(prompt_ids), sampling_params, image_data)

    async def update_weights(self, named_tensors: dict[str, torch.Tensor], global_steps: int | None = None) -> dict:
        """Loads the actor's weights; every parameter of the policy must be among them, under the same names.

        With ``sync_weights`` off it only notes the step, and counts the load it skipped.
        """
        async with self.lock:
            self.global_steps = global_steps
            if not self.options.sync_weights:
                self.counters["weight_updates_skipped"] += 1
                return dict(self.counters)
            missing, unexpected = self.model.load_state_dict(named_tensors, strict=False)
            missing = [name for name in missing if name not in self._tied_names()]
            if missing or unexpected:
                raise RuntimeError(f"weight sync mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
            self.counters["weight_updates"] += 1
        return dict(self.counters)

    def _tied_names(self) -> set[str]:
        tied = getattr(self.model, "_tied_weights_keys", None) or {}
        return set(tied if not isinstance(tied, dict) else tied.keys())

    async def stats(self) -> dict[str, Any]:
        return {**self.counters, "global_steps": self.global_steps, "pid": os.getpid()}

    # The replica's control calls: a CPU server has no KV cache to free and no weights to offload.
    async def sleep(self) -> None:
        return None

    async def wake_up(self) -> None:
        return None

    async def clear_kv_cache(self) -> None:
        return None

    async def release_kv_cache(self) -> None:
        return None

    async def resume_kv_cache(self) -> None:
        return None

    async def abort_all_requests(self, reject_request: bool = False) -> dict:
        return {"aborted_count": 0, "request_ids": []}

    async def resume_generation(self) -> None:
        return None

    async def start_profile(self, **_: Any) -> None:
        return None

    async def stop_profile(self) -> None:
        return None


class HFReplica(RolloutReplica):
    """One :class:`HFServer` per replica, beside the hybrid worker that trains the policy."""

    async def launch_servers(self) -> None:
        server = (
            ray.remote(HFServer)
            .options(name=server_name(self.replica_rank), num_cpus=0, max_concurrency=self.max_concurrency)
            .remote(config=self.config, model_config=self.model_config, replica_rank=self.replica_rank)
        )
        await server.stats.remote()  # returns once the model is loaded
        self.servers = [server]
        self._server_handle = server
        self._server_address = f"{ROLLOUT_NAME}-{self.replica_rank}"


class HFServerAdapter(BaseRollout):
    """The hybrid worker's rollout: forwards verl's naive weight sync to the replica's server."""

    def __init__(self, config: Any, model_config: Any, device_mesh: Any, replica_rank: int = -1):
        super().__init__(config, model_config, device_mesh)
        rank = int(os.environ["RANK"])
        world = self.config.tensor_model_parallel_size * self.config.data_parallel_size
        self.replica_rank = rank // world if replica_rank == -1 else replica_rank
        self.is_server_rank = rank % world == 0
        self.server = None

    async def resume(self, tags: list[str]) -> None:
        return None

    async def release(self) -> None:
        return None

    async def update_weights(self, weights: Iterable, wire_format: str = "named_tensors", **kwargs: Any) -> None:
        if wire_format != "named_tensors":
            raise ValueError(f"the {ROLLOUT_NAME} rollout takes full tensors, not {wire_format!r}")
        started = time.monotonic()
        # Every rank drains the generator: gathering an FSDP shard's full tensor is a collective.
        named = {name: tensor.detach().to("cpu", copy=True) for name, tensor in weights}
        if not self.is_server_rank:
            return
        if self.server is None:
            self.server = ray.get_actor(server_name(self.replica_rank))
        counters = await self.server.update_weights.remote(named, kwargs.get("global_steps"))
        logger.info(
            "%s weight sync: %d tensors in %.2fs (%s)", ROLLOUT_NAME, len(named), time.monotonic() - started, counters
        )
