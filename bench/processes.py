"""Stopping what a bench script or test started, with every process below it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from multiprocessing.process import BaseProcess


def stop_group(process: subprocess.Popen | BaseProcess) -> None:
    """Kills a child that leads its own process group, together with what it started (vLLM, compile workers)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:  # the child has not made its group yet, or it is gone already
        process.kill()


def kill_tree(pid: int) -> list:
    """SIGKILLs ``pid`` and every process below it at once, and waits up to 60 s for them to go.

    Ray's head and workers start sessions of their own, so a process-group kill would leave them running (finishing
    what they were writing, holding their GPU). Needs psutil, which the bare GPU machine lacks: imported here.

    Returns:
        The processes still alive after the wait (``psutil.Process``).
    """
    import psutil

    root = psutil.Process(pid)
    processes = [root, *root.children(recursive=True)]
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    _, alive = psutil.wait_procs(processes, timeout=60)
    return alive
