"""Connecting to Ray the way every entry point of the project does."""

from __future__ import annotations

import os
from typing import Any

import ray

DASHBOARD_HOST = "127.0.0.1"
"""Where a local Ray's dashboard listens unless a config says otherwise: this machine only."""
DASHBOARD_PORT = 8265
"""Ray's own default dashboard port."""


def init_ray(
    address: str | None = None,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    include_dashboard: bool = True,
    dashboard_host: str = DASHBOARD_HOST,
    dashboard_port: int = DASHBOARD_PORT,
    namespace: str | None = None,
    runtime_env: dict[str, Any] | None = None,
) -> str | None:
    """Starts a local Ray (bound to loopback) or joins the cluster at ``address``.

    Returns:
        The dashboard URL, or None when the dashboard is off.
    """
    # On one machine Ray binds loopback only; a cluster keeps its own node addresses.
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    address = address or None  # an exported but empty RAY_ADDRESS means "start locally"
    kwargs: dict[str, Any] = {
        "address": address,
        "namespace": namespace,
        "ignore_reinit_error": True,
        "runtime_env": runtime_env,
    }
    if address is None:
        kwargs.update(
            num_cpus=num_cpus,
            num_gpus=num_gpus,
            include_dashboard=include_dashboard,
            dashboard_host=dashboard_host,
            dashboard_port=dashboard_port,
        )
    context = ray.init(**kwargs)
    url = context.dashboard_url
    return f"http://{url}" if url and not url.startswith("http") else url or None
