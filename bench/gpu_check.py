"""``make gpu-check``: what a freshly installed GPU node must show before a week-long job, within ``--budget-s``.

Two parts (docs/gpu-check.md):

- **full** (the default), on a node with the whole environment, one GPU, nothing downloaded:

  1. the device as torch sees it (what ``nvidia-smi`` shows, plus the versions that matter here);
  2. both recipes' entry points for 2 steps with the tiny models (:mod:`bench.gpu_train`): vLLM from dummy
     weights, weight sync, sleep and wake, FSDP2, SAM2 on the same GPU;
  3. ``pytest -m gpu tests/test_gpu.py`` in a subprocess, stopped with its children when its time is up;
  4. the bare part, in a process of its own, with the time left.

- **bare** (``--bare``), on a GPU machine with only PyTorch and a few small wheels (no vLLM, Ray or verl; the part
  refuses to import them, so a full node proves it runs on a bare one): the device, the parity checks of
  :mod:`bench.gpu_bare` (SAM2-Large through the engine in bfloat16, the policy's forward and backward in bfloat16
  with sdpa, an image-free micro-batch included), then SAM2-Large's throughput table (:mod:`bench.sam2_throughput`).

``--quick`` is the CPU dry run of either: the training commands are composed and checked but not launched, the
GPU tests are not run, and the bare part runs on the CPU with the tiny SAM2 and the tiny policy. The exit code is 1
when anything failed; every table is printed either way.

``python -m bench.gpu_check [--bare] [--quick] [--budget-s 480] [--policy DIR]`` (``make gpu-check ARGS="..."``)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

import torch

from bench.processes import stop_group

ROOT = Path(__file__).resolve().parents[1]
GPU_TESTS = "tests/test_gpu.py"
PRINT_RESERVE_S = 5.0  # kept back from the budget to stop the measurement and print the table
GiB = 1 << 30
BARE_REFUSES = ("ray", "verl", "vllm")
"""What a bare GPU machine cannot install; the bare part refuses to import them."""


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "absent"


def device_lines() -> list[str]:
    """The software stack and each visible GPU: name, compute capability, SMs, memory, PCI bus and UUID."""
    versions = ", ".join(f"{name} {_version(name)}" for name in ("torch", "triton", "vllm", "transformers", "sam2"))
    lines = [f"software: {versions}; CUDA runtime {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}"]
    if not torch.cuda.is_available():
        return [*lines, f"no CUDA device; {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads"]
    lines.append(f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '(unset)')}; {os.cpu_count()} CPUs")
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        free, total = torch.cuda.mem_get_info(index)
        lines.append(
            f"GPU {index}: {props.name} | sm_{props.major}{props.minor} | {props.multi_processor_count} SMs | "
            f"{free / GiB:.1f} of {total / GiB:.1f} GiB free | bus {props.pci_bus_id:02x} | uuid {props.uuid}"
        )
    return lines


def run_gpu_tests(timeout_s: float) -> tuple[str, str, bool]:
    """Runs the GPU tests in a subprocess.

    Args:
        timeout_s: Wall-clock limit; the tests and their children are killed when it is reached.

    Returns:
        The result line (pytest's summary, or why there is none), pytest's whole output, and whether it passed.
    """
    command = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", GPU_TESTS]
    # A session of its own, so a timeout also stops the vLLM engine process the tests start.
    process = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        output, _ = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        stop_group(process)
        output, _ = process.communicate()
        return f"timed out after {timeout_s:.0f} s (pytest killed)", output, False
    summary = next((line.strip() for line in reversed(output.splitlines()) if line.strip()), "(no output)")
    return f"{summary} (exit code {process.returncode})", output, process.returncode == 0


def process_age_s() -> float:
    """Seconds since this process started (Linux ``/proc``), so the budget also covers importing torch and SAM2."""
    after_name = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    started_ticks = int(after_name[19])  # field 22, starttime, in clock ticks after boot
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    return uptime - started_ticks / os.sysconf("SC_CLK_TCK")


def refuse_imports(names: Sequence[str]) -> None:
    """Makes ``import <name>`` (and its submodules) fail in this process, as on a machine without the package."""
    for name in names:
        if name in sys.modules and sys.modules[name] is not None:
            raise RuntimeError(f"{name} is imported already: the bare part would not run without it")
        sys.modules[name] = None  # the import system's marker of a module that cannot be imported


def run_bare(quick: bool, policy: Path | None, deadline: float) -> bool:
    """The bare part in this process; whether every check passed (the tables are printed)."""
    refuse_imports(BARE_REFUSES)
    from bench.gpu_bare import bare_checks, checks_table
    from bench.sam2_throughput import collect, make_plan, throughput_table

    checks = bare_checks(quick, policy)
    print("\n".join(["", "Parity:", "", *checks_table(checks), ""]), flush=True)
    plan = make_plan(quick)
    rows, stopped = collect(plan, deadline)
    print("\n".join(throughput_table(plan, rows, stopped)), flush=True)
    return all(check.ok is not False for check in checks)


def run_full(args: argparse.Namespace, deadline: float) -> bool:
    """Training, the GPU tests, then the bare part in a process of its own; whether all of it passed."""
    from bench.gpu_train import commands, dry_run, train

    out = Path(args.out or tempfile.mkdtemp(prefix="gpu_check_")).resolve()
    argvs = commands(out)
    if args.quick:
        lines, passed = dry_run(argvs), True
        tests = "not run (--quick)"
    else:
        lines, passed = train(argvs, min(deadline, time.monotonic() + args.train_timeout_s))
        tests, output, tests_passed = run_gpu_tests(max(1.0, min(args.pytest_timeout_s, deadline - time.monotonic())))
        if not tests_passed:  # pytest's report only where something went wrong
            print(f"--- pytest output (last 6000 characters) ---\n{output[-6000:]}\n---", flush=True)
        passed &= tests_passed
    print("\n".join(["", *lines, "", f"GPU tests ({GPU_TESTS}): {tests}"]), flush=True)
    bare = [sys.executable, "-m", "bench.gpu_check", "--bare", f"--budget-s={max(1.0, deadline - time.monotonic())}"]
    bare += ["--quick"] * args.quick + [f"--policy={args.policy}"] * bool(args.policy)
    return subprocess.run(bare, cwd=ROOT).returncode == 0 and passed


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bare", action="store_true", help="only what a machine with PyTorch alone can run")
    parser.add_argument("--quick", action="store_true", help="CPU dry run with the tiny models (no GPU needed)")
    parser.add_argument("--budget-s", type=float, default=480.0, help="wall-clock budget of the whole check")
    parser.add_argument("--train-timeout-s", type=float, default=240.0, help="most of the budget training may use")
    parser.add_argument("--pytest-timeout-s", type=float, default=120.0, help="most of the budget the tests may use")
    parser.add_argument("--policy", type=Path, help="a Qwen2.5-VL checkpoint for the bare part (default: the tiny one)")
    parser.add_argument("--out", type=Path, help="where the training part's inputs and runs go (default: a temp dir)")
    args = parser.parse_args(argv)
    if not args.quick and not torch.cuda.is_available():
        parser.error("no CUDA device: run on a GPU, or pass --quick for the CPU dry run")
    started = time.monotonic() - process_age_s()
    deadline = started + args.budget_s - PRINT_RESERVE_S
    print("\n".join(device_lines()), flush=True)
    passed = run_bare(args.quick, args.policy, deadline) if args.bare else run_full(args, deadline)
    part = "bare part" if args.bare else "gpu-check"
    print(
        f"{part}: {'passed' if passed else 'FAILED'} in {time.monotonic() - started:.0f} s of a "
        f"{args.budget_s:.0f} s budget",
        flush=True,
    )
    if not passed:
        sys.exit(1)


if __name__ == "__main__":
    main()
