"""Registers the CPU platform's pieces with verl; :mod:`recipe.verl_plugin` imports it when ``VERL_PLATFORM=cpu``.

Order matters: importing :mod:`recipe.cpu.platform` registers the ``cpu`` platform before anything below imports
``verl.workers.engine.fsdp.transformer_impl``, which resolves the platform at import time. The other order makes
verl raise "Unknown platform 'cpu'" inside the plugin import, which verl swallows, and the run fails much later.
"""

# isort: off
import recipe.cpu.platform  # noqa: F401  first: see the module docstring

# isort: on
import os

import torch
from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead

from recipe.cpu.rollout import ROLLOUT_NAME
from recipe.verl_runtime import registration
from recipe.verl_runtime.cpu_selection import PLATFORM
from recipe.verl_runtime.verl_workarounds import apply_cpu_workarounds


@registration.rollout_replica(ROLLOUT_NAME)
def _load_replica() -> type:
    from recipe.cpu.rollout import HFReplica

    return HFReplica


# verl registers its FSDP engine for the "cuda" and "npu" devices; the same engine runs on "cpu" with FSDP2 on gloo.
registration.engine(model_type="language_model", backend=["fsdp", "fsdp2"], device=PLATFORM)(FSDPEngineWithLMHead)
apply_cpu_workarounds(ROLLOUT_NAME, "recipe.cpu.rollout.HFServerAdapter")

# Ray starts each worker with OMP_NUM_THREADS=1 (its one logical CPU). verl's sync trainer runs its phases one after
# another (generation, log-probs, update), so on one machine the worker computing may use every core: twice the
# speed of a step on the 2-core CI machine.
torch.set_num_threads(len(os.sched_getaffinity(0)))
