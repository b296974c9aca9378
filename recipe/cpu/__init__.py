"""verl's trainer on a machine without an accelerator: the ``cpu`` platform and the ``hf_cpu`` rollout backend.

Every process registers the ``cpu`` platform (:mod:`recipe.cpu.platform`, never auto-detected); the rest is loaded
only when ``VERL_PLATFORM=cpu`` selects it (:mod:`recipe.verl_runtime.cpu_selection`, read by
:mod:`recipe.verl_plugin`): it runs the recipes' real entry points with tiny models in CI and in ``make smoke``.
"""
