"""The project's workarounds of verl and TransferQueue internals: pinned sources, and each one active only where due.

When an upgrade changes a pinned function, ``test_pinned_sources_are_unchanged`` fails first: re-read the change,
then re-pin (``python -c "from recipe.verl_runtime import verl_workarounds as w; print(w.source_digest(TARGET))"``) or
drop the workaround.
"""

import json
import socket

import pytest

from recipe.verl_runtime import verl_workarounds

from support.interpreters import run_at_once


def test_versions_are_the_ones_pinned():
    from importlib.metadata import version

    assert version("verl") == verl_workarounds.VERL_VERSION
    assert version("transferqueue") == verl_workarounds.TRANSFER_QUEUE_VERSION


def test_pinned_sources_are_unchanged():
    assert verl_workarounds.changed_sources() == []


def test_a_changed_source_is_reported(monkeypatch):
    target = next(iter(verl_workarounds.PINNED_SOURCES))
    monkeypatch.setitem(verl_workarounds.PINNED_SOURCES, target, "0" * 16)
    assert verl_workarounds.changed_sources() == [target]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


_PROBE = """
import json, os
import verl
import verl.workers.engine_workers as engine_workers
from verl.utils import distributed
from verl.workers.engine.fsdp import transformer_impl
from verl.workers.rollout import base
from transfer_queue.storage.managers.simple_storage_manager import AsyncSimpleStorageManager
from verl.models.transformers import qwen2_vl
from recipe.verl_runtime import verl_workarounds

report = {
    "adapter": base._ROLLOUT_REGISTRY.get(("hf_cpu", "async")),
    "pg_patched": engine_workers.initialize_global_process_group_ray
    is not distributed.initialize_global_process_group_ray,
    "tq_patched": AsyncSimpleStorageManager.get_data is verl_workarounds.get_data_with_ragged_positions,
    "embeds_patched": qwen2_vl._get_input_embeds is verl_workarounds.input_embeds_image_free_safe,
    "pin_memory": getattr(transformer_impl.CPUOffloadPolicy(), "pin_memory", None),
}
import torch.distributed as dist
try:
    distributed.initialize_global_process_group_ray()  # verl's own
    report["verl_backend"] = str(dist.get_backend())
except Exception as err:
    report["verl_error"] = repr(err)
if os.environ.get("VERL_PLATFORM") == "cpu":
    engine_workers.initialize_global_process_group_ray()  # what the training worker calls
    report["backend"] = str(dist.get_backend())
print("REPORT " + json.dumps(report))
"""


def _probes(*platforms: str | None) -> list[dict]:
    """Each platform's report, probed in fresh interpreters at once."""
    runs = []
    for platform in platforms:
        env = {"RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}
        env = {**__import__("os").environ, **env}
        env.pop("VERL_PLATFORM", None)
        if platform:
            env["VERL_PLATFORM"] = platform
        runs.append((_PROBE, env))
    reports = []
    for done in run_at_once(runs):
        line = next((line for line in done.stdout.splitlines() if line.startswith("REPORT ")), None)
        assert line, done.stderr[-3000:]
        reports.append(json.loads(line.removeprefix("REPORT ")))
    return reports


@pytest.mark.slow
def test_cpu_workarounds_are_active_on_the_cpu_platform_only():
    cpu, default = _probes("cpu", None)
    assert cpu["adapter"] == "recipe.cpu.rollout.HFServerAdapter" and default["adapter"] is None
    assert cpu["pg_patched"] and not default["pg_patched"]
    assert cpu["pin_memory"] is False and default["pin_memory"] is True
    assert cpu["tq_patched"] and default["tq_patched"]  # the TransferQueue fix is for every run
    assert cpu["embeds_patched"] and default["embeds_patched"]  # so is the image-free micro-batch fix
    # The workaround is needed: verl's own backend string fails on the CPU platform; the patched one starts gloo.
    assert "verl_error" in cpu and cpu["backend"] == "cpu:gloo", cpu
