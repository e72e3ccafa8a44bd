"""Sessions that survive a server restart: each visitor's small state (the steps it ran and their
inputs, never a model) as one JSON file, rebuilt on the visitor's next visit by running the same
steps again through the content-addressed store.

Folder: $PRUNING_STUDIO_STATE_DIR, else `pruning-studio-sessions` in the system temp folder.
Files older than the session time-to-live are ignored and removed.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from pathlib import Path

STATE_ENV = "PRUNING_STUDIO_STATE_DIR"
_SAFE = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")


class SessionFiles:
    def __init__(self, folder: str | Path | None = None, ttl_s: float = 3 * 3600):
        self.folder = Path(folder or os.environ.get(STATE_ENV)
                           or Path(tempfile.gettempdir()) / "pruning-studio-sessions")
        self.folder.mkdir(parents=True, exist_ok=True)
        self.ttl_s = ttl_s

    def secret(self) -> str:
        """The key that encrypts the visitor key kept in the browser (gr.BrowserState): made once
        and kept here, so a restarted server can still read what browsers send back."""
        path = self.folder / ".browser-secret"
        if not path.is_file():
            import secrets

            tmp = path.with_suffix(".tmp")
            tmp.write_text(secrets.token_hex(32))
            tmp.chmod(0o600)
            tmp.replace(path)
        return path.read_text().strip()

    def _path(self, key: str) -> Path | None:
        return self.folder / f"{key}.json" if _SAFE.match(key or "") else None

    def save(self, key: str, steps: dict) -> None:
        """Write a visitor's steps atomically (a crash mid-write leaves the previous file)."""
        path = self._path(key)
        if path is None or not steps:
            return
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"key": key, "saved": time.time(), "steps": steps}, default=str))
        tmp.replace(path)

    def load(self, key: str) -> dict | None:
        """A visitor's steps, or None (unknown, unreadable or expired: removed)."""
        path = self._path(key)
        if path is None or not path.is_file():
            return None
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            path.unlink(missing_ok=True)
            return None
        if time.time() - float(record.get("saved", 0)) > self.ttl_s:
            path.unlink(missing_ok=True)
            return None
        return record.get("steps") or None

    def drop(self, key: str) -> None:
        path = self._path(key)
        if path is not None:
            path.unlink(missing_ok=True)
