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
