"""What every benchmark's JSON records about where it ran (imported by the scripts beside it)."""

from __future__ import annotations

import json
import os
import platform
import sys
from collections.abc import Callable
from pathlib import Path

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


def write_results(out: Path, record: dict, render: Callable[[dict], str]) -> None:
    """A benchmark's results: OUT.json (`record`, with the command line that ran it first) and OUT.md (`render` of
    that record, printed too)."""
    record = {"command": " ".join([Path(sys.executable).name, *sys.argv]), **record}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(record, indent=2))
    text = render(record)
    out.with_suffix(".md").write_text(text)
    print(text)
