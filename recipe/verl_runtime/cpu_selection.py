"""Whether this process runs verl on the project's ``cpu`` platform (:mod:`recipe.cpu`): ``VERL_PLATFORM=cpu``.

The launcher reads it to start Ray with virtual GPUs and to pass the platform on to every worker; the plugin reads it
while ``import verl`` is under way, to load the CPU backend only where it is selected. So this module imports nothing
of verl: a module that did could be the one half-initialised at that moment.
"""

import os

PLATFORM = "cpu"


def selected() -> bool:
    """Whether this process runs verl on the CPU platform."""
    return os.environ.get("VERL_PLATFORM", "").strip().lower() == PLATFORM
