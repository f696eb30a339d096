"""What machine a run happened on: one place for every report and benchmark.

Kept free of heavy imports (torch is imported inside `machine_info`) so that a benchmark script can describe its
machine without pulling in the training stack.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

__all__ = ["cpu_name", "machine_info"]


def cpu_name(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The processor's model name (Linux ``/proc/cpuinfo``), else what `platform` knows, never empty."""
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                if name:
                    return name
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine_info() -> dict[str, str]:
    """Platform, CPU, memory, GPU and library versions, as strings for a report or a JSON record."""
    import torch

    from gradsift.version import __version__

    info = {
        "platform": platform.platform(),
        "processor": cpu_name(),
        "cpus": str(os.cpu_count()),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": str(torch.get_num_threads()),
    }
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        info["memory"] = f"{pages * size / 2**30:.0f} GiB"
    except (ValueError, OSError, AttributeError):
        pass
    if torch.cuda.is_available():
        info["gpu"] = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        info["cuda"] = str(torch.version.cuda)
    else:
        info["gpu"] = "none (CPU only)"
    info["gradsift"] = __version__
    return info
