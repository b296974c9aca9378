"""Everything the project registers with verl exists in a fresh Ray worker, through the entry point alone."""

import os
import subprocess

import pytest
import ray

from support.interpreters import run_at_once

pytestmark = pytest.mark.slow


def test_registries_are_filled_inside_a_ray_worker():
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:

        @ray.remote
        def lookup() -> dict[str, str]:
            # Only verl is imported here: the project's modules arrive through the verl.plugins entry point.
            from verl.experimental.agent_loop.agent_loop import _agent_loop_registry
            from verl.experimental.reward_loop.reward_manager import get_reward_manager_cls
            from verl.trainer.ppo.core_algos import get_adv_estimator_fn, get_policy_loss_fn
            from verl.trainer.ppo.v1 import get_trainer_cls

            return {
                "loss": get_policy_loss_fn("samr1").__module__,
                "reward_manager": get_reward_manager_cls("sam_image").__module__,
                "trainer": get_trainer_cls("sync_reward_metrics").__module__,
                "advantage": get_adv_estimator_fn("grpo_batch_std").__module__,
                "agent_loops": sorted(name for name in _agent_loop_registry if name.startswith("veteran_")),
            }

        assert ray.get(lookup.remote()) == {
            "loss": "recipe.samr1.loss",
            "reward_manager": "recipe.verl_runtime.reward_manager",
            "trainer": "recipe.verl_runtime.trainer",
            "advantage": "recipe.veteran.advantage",
            "agent_loops": [
                "veteran_auxiliary",
                "veteran_grounding",
                "veteran_mask_comprehension",
                "veteran_workflow",
            ],
        }
    finally:
        ray.shutdown()


def test_cpu_backend_is_registered_inside_a_ray_worker_on_the_cpu_platform():
    ray.init(
        num_cpus=1,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"VERL_PLATFORM": "cpu"}},
    )
    try:

        @ray.remote
        def lookup() -> dict[str, str]:
            from verl.utils.device import get_device_name, get_nccl_backend, get_resource_name
            from verl.workers.engine.base import EngineRegistry
            from verl.workers.rollout.base import get_rollout_class
            from verl.workers.rollout.replica import RolloutReplicaRegistry

            return {
                "device": get_device_name(),
                "backend": get_nccl_backend(),
                "ray_resource": get_resource_name(),
                "engine": EngineRegistry.get_engine_cls("language_model", "fsdp2").__name__,
                "replica": RolloutReplicaRegistry.get("hf_cpu").__name__,
                "adapter": get_rollout_class("hf_cpu").__name__,
            }

        assert ray.get(lookup.remote()) == {
            "device": "cpu",
            "backend": "gloo",
            "ray_resource": "GPU",
            "engine": "FSDPEngineWithLMHead",
            "replica": "HFReplica",
            "adapter": "HFServerAdapter",
        }
    finally:
        ray.shutdown()


def _environment(**env: str) -> dict[str, str]:
    return {**{key: value for key, value in os.environ.items() if key != "VERL_PLATFORM"}, **env}


def _python(code: str, **env: str) -> subprocess.CompletedProcess:
    (done,) = run_at_once([(code, _environment(**env))])
    return done


def test_the_cpu_platform_must_be_registered_before_verls_modules_resolve_it():
    # Without the plugin, importing the project's trainer resolves the platform before anything registered "cpu".
    # Through the entry point, the plugin registers it first and every registration follows.
    wrong_order, right_order = run_at_once(
        [
            (
                "import verl, recipe.verl_runtime.trainer",
                _environment(VERL_PLATFORM="cpu", VERL_USE_EXTERNAL_PLUGINS="none"),
            ),
            (
                "import verl; from verl.utils.device import get_device_name;"
                "from verl.trainer.ppo.v1 import get_trainer_cls;"
                "print(get_device_name(), get_trainer_cls('sync_reward_metrics').__module__)",
                _environment(VERL_PLATFORM="cpu"),
            ),
        ]
    )
    assert wrong_order.returncode != 0 and "Unknown platform 'cpu'" in wrong_order.stderr
    assert right_order.returncode == 0, right_order.stderr[-2000:]
    assert right_order.stdout.split()[-2:] == ["cpu", "recipe.verl_runtime.trainer"]


def test_the_cpu_platform_is_never_auto_detected():
    from recipe.cpu.platform import PlatformCPU

    assert not PlatformCPU().is_platform_available(use_smi_check=True)
    default = _python("import verl; from verl.utils.device import get_device_name; print(get_device_name())")
    assert default.returncode == 0 and default.stdout.split()[-1] != "cpu"


# The modules the plugin and its modules take names from: if importing one first started `import verl`, verl would
# load the plugin while that module is half-initialised, and swallow the ImportError (a debug log line) - no
# registry, no fix.
FIRST_IMPORTS = (
    "recipe.verl_runtime.verl_workarounds",
    "recipe.cpu.platform",
    "recipe.verl_runtime.registration",
    "recipe.verl_runtime.cpu_selection",
)


def test_the_plugin_loads_whichever_of_its_modules_a_process_imports_first():
    probe = (
        "import {first}, sys\n"
        "import verl\n"
        "from transfer_queue.storage.managers.simple_storage_manager import AsyncSimpleStorageManager\n"
        "from verl.trainer.ppo.core_algos import get_policy_loss_fn\n"
        "from recipe.verl_runtime.verl_workarounds import get_data_with_ragged_positions\n"
        "fixed = AsyncSimpleStorageManager.get_data is get_data_with_ragged_positions\n"
        "print(get_policy_loss_fn('samr1').__module__, fixed)\n"
    )
    runs = run_at_once((probe.format(first=first), dict(os.environ)) for first in FIRST_IMPORTS)
    for first, done in zip(FIRST_IMPORTS, runs, strict=True):
        assert done.returncode == 0, (first, done.stderr[-3000:])
        assert done.stdout.split() == ["recipe.samr1.loss", "True"], first
