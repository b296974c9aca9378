"""``python -m reward_server [reward_server=tiny_cpu] [key=value ...]``: start the SAM2 pool and serve.

Starts the pool on the local Ray, or on the cluster in ``RAY_ADDRESS``, prints the dashboard URL and a status line
every ``status_interval_s`` until interrupted (or for ``serve_seconds``), then stops the pool unless it is detached.
"""

from __future__ import annotations

import time

import hydra
from omegaconf import DictConfig

from reward_server.config import ServerAppConfig, store_schemas, to_dataclass
from reward_server.pool import pool_health, shutdown_pool, start_pool
from reward_server.ray_setup import init_ray

store_schemas()  # before Hydra composes the app


def _status_line(health: list[dict]) -> str:
    parts = [
        f"{h['name']}: {h['device']} requests={h['requests']} encodes={h['encodes']} hits={h['cache_hits']} "
        f"cached={h['cached_images']} ({h['cache_bytes'] / 2**20:.0f}/{h['cache_capacity'] / 2**20:.0f} MiB) "
        f"errors={sum(h['errors'].values())}"
        for h in health
    ]
    return " | ".join(parts)


@hydra.main(version_base=None, config_path="../conf", config_name="reward_server_app")
def main(config: DictConfig) -> None:
    app = to_dataclass(config, ServerAppConfig)
    server = app.reward_server
    dashboard = init_ray(app.ray, namespace=server.pool.namespace)
    print(f"Ray dashboard: {dashboard or 'disabled'} (metrics: samrl_sam_* on its Metrics page)", flush=True)
    actors = start_pool(server)
    print(f"SAM2 pool {server.pool.name!r}: {len(actors)} actor(s) ready", flush=True)
    started = time.monotonic()
    try:
        while True:
            print(_status_line(pool_health(actors)), flush=True)
            remaining = None if app.serve_seconds is None else app.serve_seconds - (time.monotonic() - started)
            if remaining is not None and remaining <= 0:
                break
            time.sleep(app.status_interval_s if remaining is None else min(app.status_interval_s, remaining))
    except KeyboardInterrupt:
        print("interrupted", flush=True)
    finally:
        if not server.pool.detached:
            shutdown_pool(server.pool)


if __name__ == "__main__":
    main()
