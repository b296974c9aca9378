"""Registering into verl's registries (and our own) without silently replacing someone else's entry.

verl's register functions differ on a taken name: ``register_policy_loss`` and the agent-loop ``register`` overwrite
silently, the reward manager, advantage estimator and trainer ones raise only for a different object, without naming
where either comes from. :func:`unique` checks first, the same way for every registry, and then delegates to verl's
own decorator, so verl's bookkeeping stays verl's.

Re-registering the same owner is accepted: a module executed again (``importlib.reload``, or imported under a second
name) builds new objects with the same ``module.qualname``, and the agent-loop registry keeps only that path anyway;
verl's plugin entry point may also run more than once in a process.

The CPU platform registers into four more of verl's registries: platforms (overwritten silently, with an info log),
training engines (an assertion on any taken key, even for the same class), rollout replicas (overwritten silently)
and the hybrid worker's rollout adapters (a private dict, with no register function).

verl is imported only when a decorator is built, never by importing this module: the plugin's modules take names
from it, and a module that starts ``import verl`` while the plugin loads leaves the plugin half-imported (see
:mod:`recipe.verl_plugin`).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, MutableMapping
from typing import Any, TypeVar

T = TypeVar("T")


def owner(obj: Any) -> str:
    """``module.qualname`` of a class or function; the path itself for an entry kept as a path.

    verl's agent-loop registry keeps ``{"_target_": "module.qualname"}`` (or the DictConfig of an agent-loop config
    file) instead of the class; other objects are named by their ``repr``.
    """
    if isinstance(obj, str):
        return obj
    if isinstance(obj, Mapping) and "_target_" in obj:
        return str(obj["_target_"])
    qualname = getattr(obj, "__qualname__", None)
    return f"{obj.__module__}.{qualname}" if qualname else repr(obj)


def _same_owner(existing: Any, obj: Any) -> bool:
    if existing is obj:
        return True
    # Two distinct lambdas (or local classes) share a qualname: only a module-level name identifies an owner.
    return "<" not in owner(obj) and owner(existing) == owner(obj)


def _refuse_another_owner(registry: str, entries: Mapping[Hashable, Any], name: Hashable, obj: Any) -> None:
    """Raises when ``name`` is in ``entries`` under an owner other than ``obj``'s; see :func:`unique`."""
    if name in entries and not _same_owner(entries[name], obj):
        raise ValueError(
            f"{registry} {name!r} is already registered to {owner(entries[name])}; "
            f"refusing to register {owner(obj)} under the same name"
        )


def unique(
    registry: str, entries: MutableMapping[Hashable, Any], name: Hashable, register: Callable[[T], T] | None = None
) -> Callable[[T], T]:
    """A decorator registering under ``name`` that refuses a name another owner holds.

    Args:
        registry: The registry's name, for the error message.
        entries: The registry's current entries (read when the decorator is applied).
        name: The name to register (a registry may key by a tuple).
        register: The registry's own decorator for ``name``; without it, the object is stored in ``entries``.

    Raises:
        ValueError: When ``name`` is registered to a different owner, naming the registry, the name and both owners.
    """

    def decorator(obj: T) -> T:
        _refuse_another_owner(registry, entries, name, obj)
        if register is None:
            entries[name] = obj
            return obj
        return register(obj)

    return decorator


def policy_loss(name: str) -> Callable[[T], T]:
    """verl's ``register_policy_loss(name)``, refusing a name another loss holds."""
    from verl.trainer.ppo.core_algos import POLICY_LOSS_REGISTRY, register_policy_loss

    return unique("policy loss", POLICY_LOSS_REGISTRY, name, register_policy_loss(name))


def adv_estimator(name: str) -> Callable[[T], T]:
    """verl's ``register_adv_est(name)``, refusing a name another estimator holds."""
    from verl.trainer.ppo.core_algos import ADV_ESTIMATOR_REGISTRY, register_adv_est

    return unique("advantage estimator", ADV_ESTIMATOR_REGISTRY, name, register_adv_est(name))


def trainer(name: str) -> Callable[[T], T]:
    """verl's ``register_trainer(name)``, refusing a name another trainer holds."""
    from verl.trainer.ppo.v1.trainer_base import TRAINER_REGISTRY, register_trainer

    return unique("trainer", TRAINER_REGISTRY, name, register_trainer(name))


def reward_manager(name: str) -> Callable[[T], T]:
    """verl's reward-loop ``register(name)``, refusing a name another reward manager holds."""
    from verl.experimental.reward_loop.reward_manager.registry import REWARD_MANAGER, register

    return unique("reward manager", REWARD_MANAGER, name, register(name))


def agent_loop(name: str) -> Callable[[T], T]:
    """verl's agent-loop ``register(name)``, refusing a name another agent loop holds."""
    from verl.experimental.agent_loop.agent_loop import _agent_loop_registry, register

    return unique("agent loop", _agent_loop_registry, name, register(name))


def platform(name: str) -> Callable[[T], T]:
    """verl's ``PlatformRegistry.register(platform=name)``, refusing a name another platform holds."""
    from verl.plugin.platform import PlatformRegistry

    # verl keys platforms by the stripped, lower-cased name: check the key it will write.
    return unique("platform", PlatformRegistry._platforms, name.strip().lower(), PlatformRegistry.register(name))


def rollout_replica(name: str) -> Callable[[T], T]:
    """``RolloutReplicaRegistry.register(name, loader)`` as a decorator of the loader, refusing a taken name.

    verl keeps a loader (a function returning the replica class) so that a backend is imported only when selected;
    the owners named in a refusal are the loaders.
    """
    from verl.workers.rollout.replica import RolloutReplicaRegistry

    def register(loader: T) -> T:
        RolloutReplicaRegistry.register(name, loader)
        return loader

    return unique("rollout replica", RolloutReplicaRegistry._registry, name, register)


def rollout_adapter(name: str, mode: str = "async") -> Callable[[str], str]:
    """Registers the hybrid worker's rollout class for rollout ``name``, as a ``module.ClassName`` path.

    Applied to the path, as in ``rollout_adapter("hf_cpu")("recipe.cpu.rollout.HFServerAdapter")``; verl imports
    it when a worker asks ``get_rollout_class(name, mode)``. verl offers no register function for this private dict:
    :data:`recipe.verl_runtime.verl_workarounds.PINNED_SOURCES` pins the getter that reads it.
    """
    from verl.workers.rollout import base

    return unique("rollout adapter", base._ROLLOUT_REGISTRY, (name, mode))


def engine(
    model_type: str, backend: str | list[str], device: str | list[str], vendor: str | list[str] | None = None
) -> Callable[[T], T]:
    """verl's ``EngineRegistry.register(...)``, refusing a (backend, device) another engine holds.

    Every key is checked before any is written, so a refusal registers nothing. A key the same owner holds is left
    as it is: verl's own decorator asserts on any taken key, even for the same class.

    Args:
        model_type: The model type, e.g. ``"language_model"``.
        backend: One backend or several (``"fsdp"``, ``"fsdp2"``, ...).
        device: One device or several (``"cuda"``, ``"cpu"``, ...).
        vendor: One vendor, several, or None for the device's default engine (verl keys those by the device alone).
    """
    from verl.workers.engine.base import EngineRegistry

    backends = backend if isinstance(backend, list) else [backend]
    devices = device if isinstance(device, list) else [device]
    vendors = vendor if isinstance(vendor, list) else [vendor]

    def decorator(engine_class: T) -> T:
        registered = EngineRegistry._engines.get(model_type, {})
        missing = []
        for current_backend in backends:
            entries = registered.get(current_backend, {})
            for current_device in devices:
                for current_vendor in vendors:
                    key = (current_device, current_vendor) if current_vendor else current_device
                    _refuse_another_owner(f"{model_type} {current_backend} engine for", entries, key, engine_class)
                    if key not in entries:
                        missing.append((current_backend, current_device, current_vendor))
        for current_backend, current_device, current_vendor in missing:
            EngineRegistry.register(model_type, current_backend, current_device, current_vendor)(engine_class)
        return engine_class

    return decorator
