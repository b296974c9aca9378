"""verl's trainer on a machine without an accelerator: the ``cpu`` platform and the ``hf_cpu`` rollout backend.

Everything here is loaded only when ``VERL_PLATFORM=cpu`` (see :mod:`recipe.verl_plugin`): it runs the recipes'
real entry points with tiny models in CI and in ``make smoke``. GPU runs never import it.
"""
