"""One SAM2 pool client per process and pool, shared by every reward call and agent loop in that process.

verl builds a reward manager per reward worker and an agent loop per trajectory; both reach the pool through
this cache, so a process connects (and learns which images each actor holds) once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from reward_server.client import SamClient
from reward_server.config import PoolConfig, ServerConfig, server_config

_clients: dict[tuple[str, str], SamClient] = {}


def _pool_key(server: ServerConfig | Mapping[str, Any]) -> tuple[str, str]:
    if isinstance(server, ServerConfig):
        return server.pool.name, server.pool.namespace
    pool = server.get("pool") or {}
    return pool.get("name", PoolConfig.name), pool.get("namespace", PoolConfig.namespace)


def get_sam_client(server: ServerConfig | Mapping[str, Any]) -> SamClient:
    """The client of the pool named in ``server`` (a :class:`ServerConfig` or the ``reward_server`` mapping).

    Called once per reward, so only the pool's name is read each time; the whole config is validated on connect.
    """
    key = _pool_key(server)
    if key not in _clients:
        _clients[key] = SamClient.connect(server if isinstance(server, ServerConfig) else server_config(server))
    return _clients[key]
