"""Where a checkpoint was made: library versions and the hardware, recorded in every ``arf.json`` (key ``env``).

Floating-point kernels differ between CPU models and GPUs, so the same config, seed and code give different
weights on different machines (docs/BENCHMARKS.md, run Q: the offline base built on an Intel Xeon differs from
the AMD EPYC builds, and so does every number trained on it). A number can only be reproduced bit for bit on the
hardware and library versions that made it; this is what tells a reader which those were.
"""

from __future__ import annotations

import platform
from importlib import metadata
from pathlib import Path
from typing import Any

# Distributions whose version changes results (numerics, preprocessing, tokenisation); absent ones are skipped.
PACKAGES = ("torch", "torchvision", "open_clip_torch", "timm", "transformers", "numpy", "pillow", "safetensors")


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else what ``platform`` knows), or ``"unknown"``."""
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def accelerator() -> str | None:
    """The CUDA device's name when this process has initialised CUDA (a CPU-only run on a GPU machine: None)."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.get_device_name(torch.cuda.current_device())
    return None


def environment() -> dict[str, Any]:
    """Versions and hardware of this process, JSON-serialisable."""
    import torch

    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return {"python": platform.python_version(), "platform": platform.platform(), "cpu": cpu_model(),
            "accelerator": accelerator(), "torch_threads": torch.get_num_threads(), "packages": versions}
