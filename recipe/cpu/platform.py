"""verl platform ``cpu``: torch's CPU device behind verl's accelerator interface.

Selected only by ``VERL_PLATFORM=cpu``, never auto-detected. verl's resource pools count Ray ``GPU`` resources and
give each worker one, so the Ray cluster of a CPU run declares virtual GPUs (``ray_kwargs.ray_init.num_gpus``); the
workers then run on the CPU with gloo collectives and torch never sees CUDA.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any

import torch
from verl.plugin.platform import PlatformBase

from recipe.verl_runtime import registration
from recipe.verl_runtime.cpu_selection import PLATFORM


class CpuDeviceModule:
    """What verl calls on ``get_torch_device()``: ``torch.cpu`` plus the ``torch.cuda`` calls it has no answer for.

    Memory statistics read 0 (verl logs them), caches and peak counters are no-ops, seeds go to torch's CPU
    generator. Anything else is looked up on ``torch.cpu`` and fails loudly when torch has no CPU counterpart.
    """

    @staticmethod
    def get_device_name(*_: Any) -> str:
        # verl's FLOPs counter looks device names up in its table, which has an entry for "CPU".
        return "CPU"

    @staticmethod
    def empty_cache() -> None:
        return None

    @staticmethod
    def ipc_collect() -> None:
        return None

    @staticmethod
    def reset_peak_memory_stats(*_: Any) -> None:
        return None

    @staticmethod
    def memory_allocated(*_: Any) -> int:
        return 0

    memory_reserved = max_memory_allocated = max_memory_reserved = memory_allocated

    @staticmethod
    def mem_get_info(*_: Any) -> tuple[int, int]:
        import psutil

        memory = psutil.virtual_memory()
        return memory.available, memory.total

    @staticmethod
    def manual_seed(seed: int) -> None:
        torch.manual_seed(seed)

    manual_seed_all = manual_seed
    get_rng_state = staticmethod(torch.get_rng_state)
    set_rng_state = staticmethod(torch.set_rng_state)

    def __getattr__(self, name: str) -> Any:
        return getattr(torch.cpu, name)


@registration.platform(PLATFORM)
class PlatformCPU(PlatformBase):
    """The ``cpu`` platform: device ``cpu``, collectives on gloo, Ray resource ``GPU`` (virtual), no IPC."""

    device_module_instance = CpuDeviceModule()

    @property
    def device_name(self) -> str:
        return "cpu"

    @property
    def vendor_name(self) -> str:
        return "cpu"

    @property
    def device_module(self) -> Any:
        return self.device_module_instance

    def is_available(self) -> bool:
        return True

    def is_platform_available(self, use_smi_check: bool = False) -> bool:
        return False  # never auto-detected: a GPU machine must not fall back to CPU training silently

    def current_device(self) -> str:
        return "cpu"  # verl passes this to tensor.to() and torch.device()

    def device_count(self) -> int:
        return 1

    def set_device(self, device_index: int) -> None:
        return None

    def synchronize(self, device_index: int | None = None) -> None:
        return None

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def manual_seed_all(self, seed: int) -> None:
        torch.manual_seed(seed)

    def set_allocator_settings(self, settings: str) -> None:
        return None

    def empty_cache(self) -> None:
        return None

    def get_device_capability(self, device_index: int = 0) -> tuple[int | None, int | None]:
        return None, None

    def communication_backend_name(self) -> str:
        return "gloo"

    def visible_devices_envvar(self) -> str:
        return "CUDA_VISIBLE_DEVICES"

    @contextmanager
    def nvtx_range(self, msg: str):
        yield

    def profiler_start(self) -> None:
        return None

    def profiler_stop(self) -> None:
        return None

    def ray_resource_name(self) -> str:
        return "GPU"  # the virtual GPUs of the module docstring

    def ray_noset_envvars(self) -> list[str]:
        return ["RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES"]

    def is_ipc_supported(self) -> bool:
        return False

    def cudart(self) -> Any:
        return None
