"""Python snippets run in fresh interpreters, several at once: each mostly waits on its own imports (verl's take
about 15 s), which two cores overlap."""

import subprocess
import sys
from collections.abc import Iterable


def run_at_once(runs: Iterable[tuple[str, dict[str, str]]], timeout: float = 300) -> list[subprocess.CompletedProcess]:
    """Runs each ``(code, environment)`` as ``python -c code``, all started before any is waited on."""
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        for code, env in runs
    ]
    done = []
    for process in processes:
        stdout, stderr = process.communicate(timeout=timeout)
        done.append(subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr))
    return done
