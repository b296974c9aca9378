"""Registers the project's verl extensions; loaded through the ``verl.plugins`` entry point at ``import verl``.

verl imports every ``verl.plugins`` entry point in each process that imports it (the driver, the TaskRunner and
every Ray worker), so losses, reward managers, trainers and agent loops registered here exist wherever verl looks
them up. verl swallows plugin import errors, so ``tests/test_verl_plugin.py`` checks every registry.

Order matters: the ``cpu`` platform is registered first, because several modules imported below resolve verl's
platform at import time (``VERL_PLATFORM=cpu`` names it). It is never auto-detected, so GPU runs are unaffected;
the rest of the CPU backend loads only when it is selected.

A module this plugin takes names from must not import verl itself: imported first in a process, it would start
``import verl``, which loads this plugin while that module is half-initialised (the plugin then fails, silently).
"""

# isort: off
import recipe.cpu.platform  # first: see the module docstring
# isort: on

# Each import registers on import: reward manager "sam_image", trainer "sync_reward_metrics", policy loss "samr1",
# advantage estimator "grpo_batch_std", agent loops "veteran_grounding", "veteran_mask_comprehension" and
# "veteran_auxiliary" and "veteran_workflow".
import recipe.samr1.loss
import recipe.verl_runtime.reward_manager
import recipe.verl_runtime.trainer
import recipe.veteran.advantage
import recipe.veteran.agent_loops
import recipe.veteran.workflow_loop
from recipe.verl_runtime.cpu_selection import selected as cpu_platform_selected
from recipe.verl_runtime.verl_workarounds import apply_image_free_fix, apply_transfer_queue_fix

apply_transfer_queue_fix()
apply_image_free_fix()
if cpu_platform_selected():
    import recipe.cpu.register  # noqa: F401  (engine, rollout "hf_cpu", CPU workarounds)
