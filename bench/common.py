"""Shared by the benchmarks: puts the repository on sys.path, quiets transformers."""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from pruner.resources import return_large_frees_to_os  # noqa: E402

return_large_frees_to_os()      # as the CLI and the dashboard do: RSS tracks live memory

SHARED_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def machine() -> dict:
    """What a result was measured on: the CPU (its bfloat16 instructions decide how autocast's sums
    run: AMX and AVX512-BF16 kernels round differently), cores, torch, and the GPU where one is used."""
    import platform

    import torch

    info = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "torch": torch.__version__}
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        lines = cpuinfo.read_text().splitlines()
        names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
        flags = next((set(line.split(":", 1)[1].split()) for line in lines if line.startswith("flags")), set())
        info["cpu"] = names[0] if names else info["cpu"]
        info["bfloat16"] = [f for f in ("amx_bf16", "avx512_bf16") if f in flags]
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info
