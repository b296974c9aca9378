"""SAM2 side of the project: mask geometry, the SAM2 engine, its Ray actor pool and client.

``import sam2`` initialises Hydra's process-wide state as a side effect, which breaks any Hydra app (our entry
points) that starts afterwards. Every module of this package imports ``sam2`` only after this package's
``__init__`` has imported it once and undone that side effect.
"""

from hydra.core.global_hydra import GlobalHydra

_hydra_was_initialised = GlobalHydra.instance().is_initialized()
import sam2  # noqa: E402, F401

if not _hydra_was_initialised and GlobalHydra.instance().is_initialized():
    GlobalHydra.instance().clear()
