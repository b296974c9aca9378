"""Per-step SAM2 pool metrics from successive health() snapshots, restarts included (hand-computed counts)."""

from recipe.verl_runtime.pool_meter import PoolMeter


def _actor(name: str, pid: int, requests: int, encodes: int = 0, hits: int = 0, served: float = 0.0) -> dict:
    return {"name": name, "pid": pid, "requests": requests, "encodes": encodes, "cache_hits": hits, "served_s": served}


def test_increments_per_step_over_every_actor():
    meter = PoolMeter([_actor("a", 1, 10, 2, 1, 0.5), _actor("b", 2, 4)])  # served before this run: not counted
    step = meter.step([_actor("a", 1, 16, 3, 4, 0.75), _actor("b", 2, 9, 1, 0, 0.25)])
    assert step == {
        "sam/requests": 11.0,
        "sam/encodes": 2.0,
        "sam/cache_hits": 3.0,
        "sam/served_s": 0.5,
        "sam/restarts": 0.0,
    }
    assert meter.step([_actor("a", 1, 16, 3, 4, 0.75), _actor("b", 2, 9, 1, 0, 0.25)])["sam/requests"] == 0.0


def test_a_restarted_actor_counts_from_zero_and_is_counted():
    meter = PoolMeter([_actor("a", 1, 10)])
    step = meter.step([_actor("a", 7, 3, 1)])  # a new process: its counters started again
    assert (step["sam/requests"], step["sam/encodes"], step["sam/restarts"]) == (3.0, 1.0, 1.0)
    later = meter.step([_actor("a", 7, 5, 1)])
    assert (later["sam/requests"], later["sam/restarts"]) == (2.0, 1.0)  # restarts stay counted since the start


def test_without_a_baseline_the_first_step_counts_everything():
    assert PoolMeter().step([_actor("a", 1, 6)])["sam/requests"] == 6.0
