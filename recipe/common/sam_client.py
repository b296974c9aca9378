"""One SAM2 pool client per process and pool, shared by every reward call and agent loop in that process.

verl builds a reward manager per reward worker and an agent loop per trajectory; both reach the pool through
this cache, so a process connects (and learns which images each actor holds) once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from reward_server.client import SamClient
from reward_server.config import ServerConfig, server_config

_clients: dict[tuple[str, str], SamClient] = {}


def get_sam_client(server: ServerConfig | Mapping[str, Any]) -> SamClient:
    """The client of the pool named in ``server`` (a :class:`ServerConfig` or the ``reward_server`` mapping)."""
    config = server if isinstance(server, ServerConfig) else server_config(server)
    key = (config.pool.name, config.pool.namespace)
    if key not in _clients:
        _clients[key] = SamClient.connect(config)
    return _clients[key]
