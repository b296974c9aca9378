"""verl's trainer on a machine without an accelerator: the ``cpu`` platform and the ``hf_cpu`` rollout backend.

Every process registers the ``cpu`` platform (:mod:`recipe.cpu.platform`, never auto-detected); the rest is loaded
only when ``VERL_PLATFORM=cpu`` selects it (see :mod:`recipe.verl_plugin`): it runs the recipes' real entry points
with tiny models in CI and in ``make smoke``.

:func:`selected` lives here, free of verl imports, because the plugin asks it while ``import verl`` is under way: a
module that imported verl itself could be the one half-initialised at that moment.
"""

import os

PLATFORM = "cpu"


def selected() -> bool:
    """Whether this process runs verl on the CPU platform."""
    return os.environ.get("VERL_PLATFORM", "").strip().lower() == PLATFORM
