"""Per-visitor state, keyed by Gradio's session hash, with a time-to-live and a cap on how many
visitors may hold a model at once. Nothing here is shared between sessions."""

from __future__ import annotations

import gc
import os
import threading
import time
from dataclasses import dataclass, field

import pandas as pd

SESSION_TTL_S = float(os.environ.get("PRUNING_STUDIO_SESSION_TTL", 3600))
MAX_SESSIONS = int(os.environ.get("PRUNING_STUDIO_MAX_SESSIONS", 4))


class SessionError(RuntimeError):
    """Shown to the visitor as a readable message."""


@dataclass
class Session:
    """Everything one visitor has built: never visible to anyone else."""

    source: str = ""
    original: object = None          # never mutated: pruning works on copies
    tokenizer: object = None
    info: dict = field(default_factory=dict)
    scores: pd.DataFrame | None = None
    score_settings: dict = field(default_factory=dict)
    calibration: object = None       # token ids used for scoring / pruning
    pruned: object = None
    prune_result: object = None
    recipe: dict = field(default_factory=dict)
    recovery: object = None          # LoraRecovery
    merged: object = None            # pruned + LoRA, merged
    evaluations: list = field(default_factory=list)
    last_used: float = field(default_factory=time.time)

    def models(self) -> dict:
        """The models this session can compare, by display name."""
        out = {}
        if self.original is not None:
            out["original"] = self.original
        if self.pruned is not None:
            out["pruned"] = self.pruned
        if self.merged is not None:
            out["pruned + LoRA"] = self.merged
        return out

    def clear_derived(self) -> None:
        """Forget everything built from the previous model (on a new load)."""
        self.scores = self.pruned = self.prune_result = self.recovery = self.merged = None
        self.calibration = None
        self.score_settings, self.recipe, self.evaluations = {}, {}, []


class SessionRegistry:
    def __init__(self, ttl_s: float = SESSION_TTL_S, max_sessions: int = MAX_SESSIONS):
        self.ttl_s, self.max_sessions = ttl_s, max_sessions
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def _sweep(self) -> None:
        now = time.time()
        for key in [k for k, s in self._sessions.items() if now - s.last_used > self.ttl_s]:
            del self._sessions[key]
        gc.collect()

    def check_capacity(self, key: str) -> None:
        """Refuse a visitor without a session when the server already holds the maximum."""
        with self._lock:
            self._sweep()
            if key not in self._sessions and len(self._sessions) >= self.max_sessions:
                raise SessionError(f"The server is busy: {self.max_sessions} visitors hold models right "
                                   "now. Please try again in a few minutes.")

    def put(self, key: str, session: Session) -> Session:
        """Install a fully built session (replacing the visitor's previous one)."""
        with self._lock:
            session.last_used = time.time()
            self._sessions[key] = session
        gc.collect()
        return session

    def get(self, key: str) -> Session:
        """The visitor's session; a clear message if there is none or it expired."""
        with self._lock:
            session = self._sessions.get(key)
            if session is None or time.time() - session.last_used > self.ttl_s:
                self._sessions.pop(key, None)
                raise SessionError("No model loaded in this session (or it expired after "
                                   f"{self.ttl_s / 60:.0f} idle minutes): load one in the Model tab.")
            session.last_used = time.time()
            return session

    def drop(self, key: str) -> None:
        with self._lock:
            self._sessions.pop(key, None)
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass

    def __len__(self) -> int:
        return len(self._sessions)
