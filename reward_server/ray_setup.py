"""How every entry point of the project reaches Ray, and the one place the Ray settings' defaults live.

Each app composes a Ray block over :class:`RayConfig`: ``samrl.ray`` (training), ``parallel.ray`` (evaluation) and
``ray`` (the standalone SAM2 server), so the address, the dashboard and their defaults have one name and one owner.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any


@dataclass
class RayConfig:
    """A Ray block: the cluster to join, or the local Ray's dashboard.

    Filled through OmegaConf (the address's default is an interpolation, resolved when the config is converted).

    Attributes:
        address: A running Ray cluster to join (``RAY_ADDRESS`` by default); null or empty starts a local Ray bound
            to 127.0.0.1.
        include_dashboard: Start a local Ray's dashboard.
        dashboard_host: Where a local Ray's dashboard listens: this machine only unless set.
        dashboard_port: The dashboard's port (Ray's own default).
    """

    address: str | None = "${oc.env:RAY_ADDRESS,null}"
    include_dashboard: bool = True
    dashboard_host: str = "127.0.0.1"
    dashboard_port: int = 8265

    @property
    def cluster(self) -> str | None:
        """The cluster to join, or None to start a local Ray (an exported but empty ``RAY_ADDRESS`` included)."""
        return self.address or None

    def local_kwargs(self) -> dict[str, Any]:
        """``ray.init``'s keywords for a local Ray started from this block."""
        return {
            "include_dashboard": self.include_dashboard,
            "dashboard_host": self.dashboard_host,
            "dashboard_port": self.dashboard_port,
        }


@dataclass
class LocalRayConfig(RayConfig):
    """The Ray block of an app that starts Ray itself with :func:`init_ray` (the SAM2 server, the evaluator).

    The recipes use :class:`RayConfig`: verl starts their local Ray, with the resources in its own
    ``ray_kwargs.ray_init``.

    Attributes:
        num_cpus: CPUs a local Ray offers its tasks; null: the machine's.
        num_gpus: GPUs a local Ray offers; null: the machine's.
    """

    num_cpus: int | None = None
    num_gpus: int | None = None

    def local_kwargs(self) -> dict[str, Any]:
        return {**super().local_kwargs(), "num_cpus": self.num_cpus, "num_gpus": self.num_gpus}


def init_ray(config: LocalRayConfig, namespace: str | None = None) -> str | None:
    """Starts a local Ray (bound to loopback) or joins the cluster at ``config.address``.

    Returns:
        The dashboard URL, or None when the dashboard is off.
    """
    # Imported here: the configs above are read by processes that never start Ray.
    import ray

    # On one machine Ray binds loopback only; a cluster keeps its own node addresses.
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    kwargs: dict[str, Any] = {"address": config.cluster, "namespace": namespace, "ignore_reinit_error": True}
    if config.cluster is None:
        kwargs.update(config.local_kwargs())
    context = ray.init(**kwargs)
    url = context.dashboard_url
    return f"http://{url}" if url and not url.startswith("http") else url or None
