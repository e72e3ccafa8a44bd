"""Exported files on the server's disk, inside a budget.

Every export (safetensors zip, recipe, adapter, GGUF) lives in its own folder under one root:
$PRUNING_STUDIO_EXPORT_DIR, else `pruning-studio-exports` in the system temp folder, emptied when
the server starts. The budget is $PRUNING_STUDIO_DISK_GB, else half of the disk free at start.
Before an export writes, `reserve(nbytes)` deletes the least recently used export folders until
it fits, or refuses with the numbers; the store deletes an export's folder when it evicts the
cache entry that points to it (`forget`), so files live no longer than their entry.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

from .store import CapacityError

DISK_ENV, DIR_ENV = "PRUNING_STUDIO_DISK_GB", "PRUNING_STUDIO_EXPORT_DIR"


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else 0


class ExportDisk:
    def __init__(self, root: Path | None = None, budget_bytes: int | None = None, clean: bool = True):
        self.root = Path(root or os.environ.get(DIR_ENV) or Path(tempfile.gettempdir()) / "pruning-studio-exports")
        if clean and self.root.is_dir():
            shutil.rmtree(self.root, ignore_errors=True)
        self.root.mkdir(parents=True, exist_ok=True)
        if budget_bytes is None:
            budget_bytes = int(float(os.environ[DISK_ENV]) * 2**30) if os.environ.get(DISK_ENV) \
                else shutil.disk_usage(self.root).free // 2
        self.budget = int(budget_bytes)
        self._used: dict[Path, float] = {}          # folder -> last used
        self._reserved: dict[Path, int] = {}        # folder being written -> bytes promised
        self._lock = threading.Lock()

    def used_bytes(self) -> int:
        with self._lock:
            return sum(folder_bytes(f) for f in self._used) + sum(self._reserved.values())

    def new_folder(self, key: str) -> Path:
        folder = self.root / hashlib.sha256(f"{key}:{time.time()}".encode()).hexdigest()[:16]
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def reserve(self, folder: Path, nbytes: int, what: str = "this export") -> None:
        """Promise `nbytes` to `folder` (about to be written), deleting least recently used export
        folders first; CapacityError with the numbers when it cannot fit."""
        nbytes = int(nbytes)
        if nbytes > self.budget:
            raise CapacityError(f"{what} needs about {nbytes / 2**30:.2f} GB of disk, more than the "
                                f"{self.budget / 2**30:.2f} GB this server keeps for exports ({DISK_ENV}).")
        with self._lock:
            def used():
                return sum(folder_bytes(f) for f in self._used) + sum(self._reserved.values())

            for old in sorted(self._used, key=self._used.get):
                if used() + nbytes <= self.budget:
                    break
                shutil.rmtree(old, ignore_errors=True)
                del self._used[old]
            if used() + nbytes > self.budget:
                raise CapacityError(
                    f"{what} needs about {nbytes / 2**30:.2f} GB of disk; exports being written now hold "
                    f"{sum(self._reserved.values()) / 2**30:.2f} of the {self.budget / 2**30:.2f} GB kept for "
                    "exports. Please retry in a minute.")
            self._reserved[folder] = nbytes

    def done(self, folder: Path) -> None:
        """The folder is written: count what it really holds from now on."""
        with self._lock:
            self._reserved.pop(folder, None)
            if folder.is_dir():
                self._used[folder] = time.time()

    def touch(self, path: str | Path) -> bool:
        """Mark the export holding `path` as used now; False when it was deleted."""
        path = Path(path)
        with self._lock:
            for folder in self._used:
                if folder == path or folder in path.parents:
                    self._used[folder] = time.time()
                    return path.exists()
        return False

    def forget(self, value) -> None:
        """Delete the export folder(s) an evicted cache entry points to."""
        paths = [v for v in (value.values() if isinstance(value, dict) else []) if isinstance(v, str)]
        with self._lock:
            for folder in list(self._used):
                if any(folder == Path(p) or folder in Path(p).parents for p in paths):
                    shutil.rmtree(folder, ignore_errors=True)
                    del self._used[folder]
