"""`python -m reward_server` starts the pool, reports it and stops it (a real subprocess, local Ray)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def test_standalone_entry_starts_reports_and_stops_the_pool():
    overrides = ["reward_server=tiny_cpu", "serve_seconds=0", "ray.num_cpus=2", "ray.include_dashboard=false"]
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_ADDRESS": ""}
    done = subprocess.run(
        [sys.executable, "-m", "reward_server", *overrides],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert "Ray dashboard: disabled" in lines[0]
    assert "SAM2 pool 'sam2_reward': 1 actor(s) ready" in lines
    assert any(line.startswith("sam2_reward-0: cpu requests=0 encodes=0") for line in lines)


def test_config_errors_are_one_line_and_name_the_key():
    done = subprocess.run(
        [sys.executable, "-m", "reward_server", "reward_server.engine.cache_bytes=lots"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert "cache_bytes" in done.stderr
