"""Every place the project changes a verl or TransferQueue internal, for verl 0.9.1 and transferqueue 0.1.11.

Each workaround replaces one function or entry, says why, and is applied only where it is needed: the
TransferQueue and image-free micro-batch fixes in every process (they crash GPU runs too), the others only on the
CPU platform. The source of
every function replaced or wrapped is pinned in :data:`PINNED_SOURCES`; ``tests/test_verl_workarounds.py`` fails
when an upgrade changes one of them, so each workaround is re-examined rather than silently kept.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import inspect
from typing import Any

import torch

from recipe.verl_runtime import registration

VERL_VERSION = "0.9.1"
TRANSFER_QUEUE_VERSION = "0.1.11"

PINNED_SOURCES: dict[str, str] = {
    "transfer_queue.storage.managers.simple_storage_manager:AsyncSimpleStorageManager._pack_field_values": (
        "2cbc524b3286d56b"
    ),
    "transfer_queue.storage.managers.simple_storage_manager:AsyncSimpleStorageManager.get_data": "714caa08c927bdae",
    "verl.utils.tensordict_utils:maybe_fix_3d_position_ids": "dc8fa98190805633",
    "verl.utils.distributed:initialize_global_process_group_ray": "761a94d1a2e058d3",
    "verl.models.transformers.qwen2_vl:_get_input_embeds": "16ff653d7bc184af",
    "verl.workers.engine.fsdp.transformer_impl:FSDPEngine._build_fsdp_module": "35b7b539858443e4",
    "verl.workers.rollout.base:get_rollout_class": "d0be5827f1214f04",
}
"""``module:qualified.name`` -> sha256 (first 16 hex digits) of the source each workaround was written against."""


_REPLACED: dict[str, Any] = {}
"""Pinned targets that a workaround replaced in place, with the original object."""


def resolve(target: str) -> Any:
    """The object named ``module:qualified.name``."""
    module_name, _, qualname = target.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = inspect.getattr_static(obj, part) if isinstance(obj, type) else getattr(obj, part)
    return obj.__func__ if isinstance(obj, staticmethod | classmethod) else obj


def source_digest(target: str) -> str:
    """The first 16 hex digits of the sha256 of ``target``'s source (the original, where a workaround replaced it)."""
    original = _REPLACED.get(target) or resolve(target)
    return hashlib.sha256(inspect.getsource(original).encode()).hexdigest()[:16]


def changed_sources() -> list[str]:
    """The pinned functions whose source differs from what the workarounds were written against."""
    return [target for target, digest in PINNED_SOURCES.items() if source_digest(target) != digest]


# --- TransferQueue: equal-length mrope position_ids (every run) -------------------------------------------------
#
# TransferQueue's get_data packs each field's per-sample tensors with torch.nested.as_nested_tensor(layout=jagged).
# Qwen2.5-VL's position_ids are (4, L) per sample. When every sample has the same L, torch makes dim 1 (the 4 mrope
# channels) the ragged one; verl's maybe_fix_3d_position_ids then forces _ragged_idx=2, and the actor update fails
# ("split_with_sizes expects split_sizes to sum exactly to ...") or, with fixed micro-batches, silently feeds the model
# wrong positions. Small batches whose responses all stop at the length limit hit this. The fix repacks that one
# field with the sequence (last) dim ragged, with verl's own constructor, as verl builds 3-D position_ids itself.
# Other fields keep TransferQueue's packing: for (L, k) fields the ragged dim is the first, which torch gets right.

_TQ_GET_DATA_TARGET = "transfer_queue.storage.managers.simple_storage_manager:AsyncSimpleStorageManager.get_data"
_TQ_GET_DATA = resolve(_TQ_GET_DATA_TARGET)
_REPLACED[_TQ_GET_DATA_TARGET] = _TQ_GET_DATA


def ragged_sequence_dim(position_ids: torch.Tensor) -> torch.Tensor:
    """Batched per-sample ``(C, L)`` position ids as a nested tensor whose ragged dim is ``L``; others unchanged."""
    if not (position_ids.is_nested and position_ids.dim() == 3) or position_ids._ragged_idx == 2:
        return position_ids
    from verl.utils.tensordict_utils import nested_tensor_from_tensor_list

    return nested_tensor_from_tensor_list(list(position_ids.unbind()), ragged_idx=2)


@functools.wraps(_TQ_GET_DATA)
async def get_data_with_ragged_positions(self: Any, metadata: Any) -> Any:
    """TransferQueue's ``get_data`` with ``position_ids`` ragged along the sequence (see above)."""
    data = await _TQ_GET_DATA(self, metadata)
    if "position_ids" in data.keys():  # noqa: SIM118  (TensorDict refuses `in` on itself)
        data["position_ids"] = ragged_sequence_dim(data["position_ids"])
    return data


def apply_transfer_queue_fix() -> None:
    """Installs :func:`get_data_with_ragged_positions` in TransferQueue's storage manager."""
    from transfer_queue.storage.managers.simple_storage_manager import AsyncSimpleStorageManager

    AsyncSimpleStorageManager.get_data = get_data_with_ragged_positions


# --- verl: a Qwen2.5-VL micro-batch without images (every run) --------------------------------------------------
#
# verl's patched Qwen2-VL forward runs a placeholder vision pass on a text-only micro-batch, so every vision
# parameter takes part in the backward (FSDP needs it), and adds 0 * its mean. On transformers 5 the vision tower
# returns a model output, not a tensor, and `.mean()` fails: "'BaseModelOutputWithPooling' object has no attribute
# 'mean'". Such micro-batches happen: a rollout group that fails is replaced by text-only padding samples, which
# verl's partitioning puts together at the tail of a rank's list. The fix runs the same placeholder pass and takes
# the embeddings out of the output with verl's own unpack_visual_output; batches with images go to verl unchanged.

# verl is resolved when the fix is applied, not when this module is imported: importing this module first must not
# start `import verl`, whose plugin loading would then import this half-initialised module and fail (silently).
_EMBEDS_TARGET = "verl.models.transformers.qwen2_vl:_get_input_embeds"


def input_embeds_image_free_safe(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    pixel_values: torch.Tensor | None = None,
    pixel_values_videos: torch.Tensor | None = None,
    image_grid_thw: torch.Tensor | None = None,
    video_grid_thw: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """verl's ``_get_input_embeds``, with the placeholder vision pass of a text-only batch working (see above)."""
    if pixel_values is not None or pixel_values_videos is not None:
        return _REPLACED[_EMBEDS_TARGET](
            model, input_ids, attention_mask, pixel_values, pixel_values_videos, image_grid_thw, video_grid_thw
        )
    from verl.models.transformers.qwen2_vl import unpack_visual_output

    inputs_embeds = model.get_input_embeddings()(input_ids)
    config = model.config.vision_config
    patch_dim = config.in_channels * config.temporal_patch_size * config.patch_size**2
    placeholder = torch.zeros((16, patch_dim), dtype=inputs_embeds.dtype, device=inputs_embeds.device)
    grid = torch.tensor([[1, 4, 4]], dtype=torch.long, device=inputs_embeds.device)
    image_embeds, _ = unpack_visual_output(model.visual(placeholder, grid_thw=grid))
    inputs_embeds = inputs_embeds + 0.0 * image_embeds.mean()
    return inputs_embeds, None if attention_mask is None else attention_mask.to(inputs_embeds.device)


def apply_image_free_fix() -> None:
    """Installs :func:`input_embeds_image_free_safe` where verl's Qwen2-VL forwards look it up."""
    from verl.models.transformers import qwen2_vl

    _REPLACED.setdefault(_EMBEDS_TARGET, qwen2_vl._get_input_embeds)
    qwen2_vl._get_input_embeds = input_embeds_image_free_safe


# --- CPU platform only ------------------------------------------------------------------------------------------


def _register_rollout_adapter(name: str, fqn: str) -> None:
    # verl looks the hybrid worker's rollout class up in a private dict and offers no register function; the
    # registration module writes it, refusing a name another adapter holds, like every other registry.
    registration.rollout_adapter(name)(fqn)


def _gloo_process_group() -> None:
    # verl builds the backend string f"cpu:gloo,{device}:{backend}", "cpu:gloo,cpu:gloo" on the CPU platform, which
    # torch rejects for naming a device twice. The training worker calls it without a backend: default it to gloo.
    import verl.workers.engine_workers as engine_workers
    from verl.utils.distributed import initialize_global_process_group_ray

    @functools.wraps(initialize_global_process_group_ray)
    def initialize_gloo(timeout_second: int | None = None, backend: str | None = None) -> None:
        initialize_global_process_group_ray(timeout_second=timeout_second, backend=backend or "cpu:gloo")

    engine_workers.initialize_global_process_group_ray = initialize_gloo


def _unpinned_cpu_offload() -> None:
    # FSDP2 forward-only (reference) modules get CPUOffloadPolicy(pin_memory=True); pinning host memory needs a CUDA
    # driver. On the CPU platform the "offloaded" parameters already live in host memory: drop the pinning.
    from verl.workers.engine.fsdp import transformer_impl

    policy = transformer_impl.CPUOffloadPolicy
    if not isinstance(policy, functools.partial):
        transformer_impl.CPUOffloadPolicy = functools.partial(_offload_policy_without_pinning, policy)


def _offload_policy_without_pinning(policy: type, *args: Any, **kwargs: Any) -> Any:
    return policy(*args, **{**kwargs, "pin_memory": False})


def apply_cpu_workarounds(rollout_name: str, adapter_fqn: str) -> None:
    """The CPU platform's workarounds; ``rollout_name``'s hybrid-worker adapter is the class at ``adapter_fqn``."""
    _register_rollout_adapter(rollout_name, adapter_fqn)
    _gloo_process_group()
    _unpinned_cpu_offload()
