"""What every benchmark's JSON records about where it ran (imported by the scripts beside it)."""

from __future__ import annotations

import os
import platform

import torch
import transformers

GB = 1e9


def device_info(device: str) -> dict:
    """The device, library versions and machine a benchmark ran on."""
    info = {
        "device": device,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name()
        info["gpu_memory_gb"] = round(torch.cuda.get_device_properties(0).total_memory / GB, 1)
    else:
        info["cpu"] = platform.processor() or platform.machine()
    return info
