"""TransferQueue's packing of equal-length mrope ``position_ids``, through verl's own actor code paths.

Qwen2.5-VL's ``position_ids`` are (4, L) per sample. TransferQueue's ``get_data`` packs each field's per-sample
tensors with ``torch.nested.as_nested_tensor(layout=jagged)``; when every sample has the same L, torch makes dim 1
(the 4 channels) the ragged one, and verl's ``maybe_fix_3d_position_ids`` then declares dim 2 ragged. The values
of such a tensor cannot be split per sample any more, and everything after it fails or mixes samples up.

The fix (``recipe/verl_runtime/verl_workarounds.py``, installed by ``import verl`` through the plugin) replaces
``AsyncSimpleStorageManager.get_data`` with ``get_data_with_ragged_positions``: TransferQueue's own ``get_data``,
then ``position_ids`` alone repacked with its sequence dim ragged. Every other field keeps TransferQueue's packing,
so (L, k) fields such as teacher top-k log-probs or routed experts stay ragged along L.

Nothing here re-implements verl or TransferQueue: batches come out of TransferQueue's real ``get_data``
(simple_storage_manager.py:649, storage units stubbed with in-memory lists), or out of the fix wrapped around it,
and go through the verl functions ``update_actor`` and ``compute_log_prob`` call, in order, on the worker
(verl 0.9.1):

- ``transferqueue_utils.tqbridge`` -> ``_meta_to_realdata`` -> TQ ``get_data``; the batch reaches the worker
  method unpickled.
- ``update_actor`` (engine_workers.py:714) -> ``train_mini_batch``: ``maybe_fix_3d_position_ids`` (:252),
  ``tu.make_iterator`` (:273) -> ``index_select_tensor_dict`` (tensordict_utils.py:610) -> ``unbind``
  (tensordict_utils.py:495): the crash; per mini-batch ``maybe_fix_3d_position_ids`` (:290) -> ``train_batch``
  (engine/base.py:124) -> FSDP ``forward_backward_batch`` -> ``prepare_micro_batches`` (transformer_impl.py:737):
  ``rearrange_micro_batches`` -> ``index_select_tensor_dict`` (dynamic batch size) or ``chunk_tensordict``
  (fixed micro-batch size, the project's configs).
- ``compute_log_prob`` -> ``infer_batch``: ``maybe_fix_3d_position_ids`` (engine/base.py:145) ->
  ``forward_backward_batch`` -> ``prepare_micro_batches`` as above.

The model then receives ``position_ids.values()`` as the packed (4, total_nnz) positions (transformer_impl.py:1194).
"""

from __future__ import annotations

import asyncio
import pickle
from collections.abc import Callable

import pytest
import torch
from tensordict import NonTensorStack, TensorDict
from transfer_queue.metadata import BatchMeta
from transfer_queue.storage.managers.simple_storage_manager import AsyncSimpleStorageManager
from verl.utils import tensordict_utils as tu
from verl.workers.engine.utils import prepare_micro_batches

from recipe.verl_runtime import verl_workarounds
from recipe.verl_runtime.verl_workarounds import (
    apply_transfer_queue_fix,
    get_data_with_ragged_positions,
    ragged_sequence_dim,
)

PROMPT_LEN = 20
MINI_BATCH = 4  # ppo_mini_batch_size * rollout.n per GPU
MICRO_BATCH = 2  # ppo_micro_batch_size_per_gpu (conf/samr1.yaml, conf/veteran.yaml)
MAX_TOKEN_LEN = 128  # max_token_len_per_gpu with use_dynamic_bsz
EQUAL = [50, 50, 50, 50]  # e.g. every response stopped at the length limit
UNEQUAL = [37, 61, 50, 44]
GLOBAL_INDEXES = [10, 3, 7, 4]  # spread over both stub storage units, in no particular order
TOP_K = 5  # teacher top-k log-probs: (L, TOP_K) per sample
MOE_LAYERS, MOE_TOP_K = 3, 2  # routed experts: (L, MOE_LAYERS, MOE_TOP_K) per sample

TQ_GET_DATA = verl_workarounds._TQ_GET_DATA
"""TransferQueue's own ``get_data``, as the fix keeps it before replacing it."""


def _installed_get_data() -> Callable:
    """``AsyncSimpleStorageManager.get_data`` as ``import verl`` left it: the fix."""
    installed = AsyncSimpleStorageManager.get_data
    assert installed is get_data_with_ragged_positions
    return installed


def test_import_verl_installs_the_fix_over_transfer_queues_get_data():
    assert _installed_get_data() is get_data_with_ragged_positions
    assert verl_workarounds._REPLACED[verl_workarounds._TQ_GET_DATA_TARGET] is TQ_GET_DATA
    # functools.wraps copies the name and module; the globals tell TransferQueue's code from the wrapper.
    assert TQ_GET_DATA is not get_data_with_ragged_positions and not hasattr(TQ_GET_DATA, "__wrapped__")
    assert TQ_GET_DATA.__globals__["__name__"] == "transfer_queue.storage.managers.simple_storage_manager"
    assert TQ_GET_DATA.__qualname__ == "AsyncSimpleStorageManager.get_data"
    assert get_data_with_ragged_positions.__wrapped__ is TQ_GET_DATA


def test_apply_transfer_queue_fix_replaces_only_get_data(monkeypatch):
    monkeypatch.setattr(AsyncSimpleStorageManager, "get_data", TQ_GET_DATA)  # restored to the fix on teardown
    before = dict(vars(AsyncSimpleStorageManager))
    apply_transfer_queue_fix()
    after = dict(vars(AsyncSimpleStorageManager))
    assert after.keys() == before.keys()
    assert [name for name in after if after[name] is not before[name]] == ["get_data"]
    assert after["get_data"] is get_data_with_ragged_positions


def _mrope_position_ids(sample: int, length: int) -> torch.Tensor:
    # Real mrope rows repeat values across channels and samples; these do not, so any mix-up of samples, channels
    # or positions changes the values.
    channels = [torch.arange(length) + 1_000 * channel + 100_000 * sample for channel in range(4)]
    return torch.stack(channels)


def _samples(lengths: list[int], per_token_fields: bool = False) -> list[dict]:
    """Per-sample fields as the agent loop puts them into TransferQueue (agent_loop_tq.py), plus a sample id.

    ``per_token_fields`` adds (L, k) and (L, layers, k) fields: teacher top-k log-probs and routed experts.
    """
    samples = []
    for i, length in enumerate(lengths):
        response_len = length - PROMPT_LEN
        prompts = torch.arange(PROMPT_LEN) + 1_000 * i
        responses = torch.arange(response_len) + 1_000 * i + 500
        sample = {
            "sample_id": torch.tensor(i),
            "prompts": prompts,
            "responses": responses,
            "input_ids": torch.cat([prompts, responses]),
            "attention_mask": torch.ones(length, dtype=torch.int64),
            "response_mask": torch.ones(response_len, dtype=torch.int64),
            "loss_mask": torch.ones(response_len, dtype=torch.int64),
            "position_ids": _mrope_position_ids(i, length),
            "old_log_probs": torch.linspace(-1.0, -0.1, response_len) - i,
            "advantages": torch.full((response_len,), 0.25 * i),
            "reward_score": torch.tensor(0.5 * i),
            "uid": f"prompt-{i // 2}",
            "extra_info": {"index": i, "question": f"object {i}"},
        }
        if per_token_fields:
            top_k = torch.arange(response_len * TOP_K, dtype=torch.float32).reshape(response_len, TOP_K)
            sample["teacher_topk_log_probs"] = -top_k / (10 * (i + 1))
            experts = torch.arange(length * MOE_LAYERS * MOE_TOP_K, dtype=torch.int32) + 10_000 * i
            sample["routed_experts"] = experts.reshape(length, MOE_LAYERS, MOE_TOP_K)
        samples.append(sample)
    return samples


def _get_data(samples: list[dict], get_data: Callable) -> TensorDict:
    """``get_data`` (TQ's or the fix) on an ``AsyncSimpleStorageManager`` whose two storage units answer from memory."""
    fields = list(samples[0])
    store = dict(zip(GLOBAL_INDEXES, samples, strict=True))

    async def get_from_single_storage_unit(global_indexes, fields, target_storage_unit):
        return fields, {field: [store[index][field] for index in global_indexes] for field in fields}

    manager = object.__new__(AsyncSimpleStorageManager)
    manager.storage_manager_id = "test"
    manager.storage_unit_infos = {"unit_a": None, "unit_b": None}
    manager._get_from_single_storage_unit = get_from_single_storage_unit
    metadata = BatchMeta(
        global_indexes=GLOBAL_INDEXES,
        partition_ids=["train"] * len(samples),
        field_schema={field: {} for field in fields},
    )
    return asyncio.run(get_data(manager, metadata))


def _tq_get_data(samples: list[dict]) -> TensorDict:
    """TransferQueue as released."""
    return _get_data(samples, TQ_GET_DATA)


def _fixed_get_data(samples: list[dict]) -> TensorDict:
    """TransferQueue with the fix, as every process that imported verl calls it."""
    return _get_data(samples, _installed_get_data())


def _pickle_round_trip(data: TensorDict) -> TensorDict:
    # What maybe_fix_3d_position_ids's comment is about: a consolidated TensorDict sent through pickle (Ray).
    return pickle.loads(pickle.dumps(data.consolidate()))


def _micro_batches(data: TensorDict, use_dynamic_bsz: bool) -> list[TensorDict]:
    # FSDP forward_backward_batch (transformer_impl.py:737), one data-parallel rank.
    tu.assign_non_tensor(
        data,
        use_dynamic_bsz=use_dynamic_bsz,
        max_token_len_per_gpu=MAX_TOKEN_LEN,
        micro_batch_size_per_gpu=MICRO_BATCH,
    )
    micro_batches, _ = prepare_micro_batches(data=data, dp_group=None, same_micro_num_in_dp=True)
    return micro_batches


def _update_actor(data: TensorDict, use_dynamic_bsz: bool) -> list[TensorDict]:
    """The micro-batches ``update_actor`` hands to the model, built by verl's own calls in its order."""
    tu.maybe_fix_3d_position_ids(data)  # train_mini_batch, engine_workers.py:252
    mini_batches = tu.make_iterator(  # engine_workers.py:273
        data, mini_batch_size=MINI_BATCH, epochs=1, seed=42, dataloader_kwargs={"shuffle": True}
    )
    micro_batches = []
    for mini_batch in mini_batches:
        tu.maybe_fix_3d_position_ids(mini_batch)  # engine_workers.py:290
        tu.maybe_fix_3d_position_ids(mini_batch)  # train_batch, engine/base.py:124
        micro_batches += _micro_batches(mini_batch, use_dynamic_bsz)
    return micro_batches


def _compute_log_prob(data: TensorDict, use_dynamic_bsz: bool) -> list[TensorDict]:
    """The micro-batches ``compute_log_prob`` hands to the model."""
    tu.maybe_fix_3d_position_ids(data)  # infer_batch, engine/base.py:145
    return _micro_batches(data, use_dynamic_bsz)


CHAINS = {"update_actor": _update_actor, "compute_log_prob": _compute_log_prob}


def _assert_model_gets_each_samples_positions(micro_batches: list[TensorDict], samples: list[dict]) -> None:
    seen = []
    for micro_batch in micro_batches:
        ids = micro_batch["sample_id"].tolist()
        seen += ids
        expected = [samples[i]["position_ids"] for i in ids]
        position_ids = micro_batch["position_ids"]
        assert position_ids.is_nested and position_ids._ragged_idx == 2
        recovered = position_ids.unbind()
        assert len(recovered) == len(expected)
        for got, want in zip(recovered, expected, strict=True):
            assert torch.equal(got, want)
        # What prepare_model_inputs passes to the model (transformer_impl.py:1194), aligned with input_ids.
        assert torch.equal(position_ids.values(), torch.cat(expected, dim=1))
        assert torch.equal(position_ids.offsets(), micro_batch["input_ids"].offsets())
        assert torch.equal(micro_batch["input_ids"].values(), torch.cat([samples[i]["input_ids"] for i in ids]))
    assert sorted(seen) == list(range(len(samples)))


# --- without the fix --------------------------------------------------------------------------------------------


def test_transfer_queue_makes_the_mrope_channels_ragged_only_for_equal_lengths():
    equal = _tq_get_data(_samples(EQUAL))["position_ids"]
    assert equal.is_nested and equal._ragged_idx == 1 and equal.values().shape == (4 * len(EQUAL), EQUAL[0])
    unequal = _tq_get_data(_samples(UNEQUAL))["position_ids"]
    assert unequal.is_nested and unequal._ragged_idx == 2 and unequal.values().shape == (4, sum(UNEQUAL))


@pytest.mark.parametrize("pickled", [False, True], ids=["from_tq", "pickled"])
@pytest.mark.parametrize(
    ("chain", "use_dynamic_bsz"),
    [("update_actor", False), ("update_actor", True), ("compute_log_prob", True)],
)
def test_equal_lengths_crash_verl_without_the_fix(chain, use_dynamic_bsz, pickled):
    data = _tq_get_data(_samples(EQUAL))
    if pickled:
        data = _pickle_round_trip(data)
    message = r"split_with_sizes expects split_sizes to sum exactly to 50 .*but got split_sizes=\[4, 4, 4, 4\]"
    with pytest.raises(RuntimeError, match=message):
        CHAINS[chain](data, use_dynamic_bsz)


@pytest.mark.parametrize("pickled", [False, True], ids=["from_tq", "pickled"])
def test_equal_lengths_feed_the_model_wrong_positions_with_fixed_micro_batches_without_the_fix(pickled):
    # chunk_tensordict catches the failed unbind and rebuilds from a padded copy: no error, wrong positions.
    samples = _samples(EQUAL)
    data = _tq_get_data(samples)
    if pickled:
        data = _pickle_round_trip(data)
    micro_batches = _compute_log_prob(data, use_dynamic_bsz=False)
    for micro_batch in micro_batches:
        packed_positions = micro_batch["position_ids"].values()
        assert packed_positions.shape[-1] != micro_batch["input_ids"].values().numel()
    with pytest.raises(AssertionError):
        _assert_model_gets_each_samples_positions(micro_batches, samples)


# --- with the fix -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pickled", [False, True], ids=["from_tq", "pickled"])
@pytest.mark.parametrize("use_dynamic_bsz", [False, True], ids=["fixed_micro", "dynamic_bsz"])
@pytest.mark.parametrize("chain", list(CHAINS))
@pytest.mark.parametrize("lengths", [EQUAL, UNEQUAL], ids=["equal", "unequal"])
def test_the_fix_gives_the_model_each_samples_positions(lengths, chain, use_dynamic_bsz, pickled):
    samples = _samples(lengths)
    data = _fixed_get_data(samples)
    if pickled:
        data = _pickle_round_trip(data)
    micro_batches = CHAINS[chain](data, use_dynamic_bsz)
    _assert_model_gets_each_samples_positions(micro_batches, samples)


# --- the fix leaves everything else as TransferQueue packs it -------------------------------------------------


def _assert_same_packing(got, want) -> None:
    assert type(got) is type(want)
    if isinstance(want, torch.Tensor):
        assert (got.is_nested, got.layout, got.dtype) == (want.is_nested, want.layout, want.dtype)
        assert got.dim() == want.dim()
        if want.is_nested:
            assert got._ragged_idx == want._ragged_idx
            assert torch.equal(got.offsets(), want.offsets())
            assert torch.equal(got.values(), want.values())
        else:
            assert torch.equal(got, want)
    else:
        assert isinstance(want, NonTensorStack)
        assert got.tolist() == want.tolist()


@pytest.mark.parametrize("lengths", [EQUAL, UNEQUAL], ids=["equal", "unequal"])
def test_the_fix_changes_nothing_but_equal_length_position_ids_in_a_batch(lengths):
    samples = _samples(lengths, per_token_fields=True)
    tq_batch, fixed_batch = _tq_get_data(samples), _fixed_get_data(samples)
    assert type(fixed_batch) is type(tq_batch) and fixed_batch.batch_size == tq_batch.batch_size
    keys = sorted(tq_batch.keys())  # iterating a TensorDict itself yields its rows, not its keys
    assert sorted(fixed_batch.keys()) == keys == sorted(samples[0])
    assert tq_batch["sample_id"].tolist() == list(range(len(samples)))  # row i is samples[i]
    for key in keys:
        if key == "position_ids" and len(set(lengths)) == 1:
            fixed, tq = fixed_batch[key], tq_batch[key]
            assert (fixed._ragged_idx, tq._ragged_idx) == (2, 1)
            for got, was, want in zip(fixed.unbind(), tq.unbind(), samples, strict=True):
                assert torch.equal(got, want[key]) and torch.equal(was, want[key])
            assert torch.equal(fixed.offsets(), fixed_batch["input_ids"].offsets())
        else:
            _assert_same_packing(fixed_batch.get(key), tq_batch.get(key))
    # The (L, k) and (L, layers, k) fields: ragged along L (dim 1 of the batch), values per sample, with or without
    # equal lengths; ragged_sequence_dim would have made dim 2 ragged, so the fix must not touch them.
    for key, dim in [("teacher_topk_log_probs", 3), ("routed_experts", 4)]:
        packed = fixed_batch[key]
        assert packed.is_nested and packed.dim() == dim and packed._ragged_idx == 1
        for got, want in zip(packed.unbind(), samples, strict=True):
            assert got.dtype == want[key].dtype and torch.equal(got, want[key])


# --- ragged_sequence_dim on its own -----------------------------------------------------------------------------


def test_ragged_sequence_dim_makes_equal_length_position_ids_ragged_along_the_sequence():
    samples = _samples(EQUAL)
    tq = _tq_get_data(samples)["position_ids"]
    fixed = ragged_sequence_dim(tq)
    assert tq._ragged_idx == 1 and fixed.is_nested and fixed._ragged_idx == 2
    assert torch.equal(fixed.values(), torch.cat([sample["position_ids"] for sample in samples], dim=1))
    for got, sample in zip(fixed.unbind(), samples, strict=True):
        assert torch.equal(got, sample["position_ids"])


def _already_ragged_along_the_sequence() -> dict[str, torch.Tensor]:
    return {
        "tq_unequal_position_ids": _tq_get_data(_samples(UNEQUAL))["position_ids"],
        "fixed_equal_position_ids": _fixed_get_data(_samples(EQUAL))["position_ids"],
        "verl_equal_position_ids": tu.nested_tensor_from_tensor_list(
            [_mrope_position_ids(i, 50) for i in range(3)], ragged_idx=2
        ),
    }


NOT_NESTED = {
    "dense_position_ids": torch.stack([_mrope_position_ids(i, 50) for i in range(3)]),
    "one_sample_position_ids": _mrope_position_ids(0, 50),
    "1d": torch.arange(6),
    "scalar": torch.tensor(0.5),
    "dense_4d": torch.rand(2, 3, 4, 5),
}


@pytest.mark.parametrize("tensor", NOT_NESTED.values(), ids=NOT_NESTED.keys())
def test_ragged_sequence_dim_leaves_dense_tensors_as_they_are(tensor):
    assert ragged_sequence_dim(tensor) is tensor


@pytest.mark.parametrize("name", ["tq_unequal_position_ids", "fixed_equal_position_ids", "verl_equal_position_ids"])
def test_ragged_sequence_dim_leaves_position_ids_ragged_along_the_sequence_as_they_are(name):
    position_ids = _already_ragged_along_the_sequence()[name]
    assert position_ids.is_nested and position_ids.dim() == 3 and position_ids._ragged_idx == 2
    assert ragged_sequence_dim(position_ids) is position_ids


def test_ragged_sequence_dim_leaves_other_nested_shapes_as_they_are():
    batch = _tq_get_data(_samples(EQUAL, per_token_fields=True))
    for key in ["input_ids", "routed_experts"]:  # 2-D and 4-D nested
        assert batch[key].is_nested and batch[key].dim() != 3
        assert ragged_sequence_dim(batch[key]) is batch[key]
