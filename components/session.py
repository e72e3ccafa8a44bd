"""Per-visitor state. A session holds *keys* into the shared `Store` (its original, scores, pruned
model, recovery, merged model) plus the few small things that are its own; the heavy objects live
in the store, shared by every visitor who asked for the same thing. A visitor's key is kept in the
browser (BrowserState), so reloading the page finds the same session.

Nothing here is shared between visitors except through the store's content-addressed results,
which are identical for identical requests by construction."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import pandas as pd

from .store import Store

SESSION_TTL_S = float(os.environ.get("PRUNING_STUDIO_SESSION_TTL", 3 * 3600))


class SessionError(RuntimeError):
    """Shown to the visitor as a readable message."""


@dataclass
class Session:
    """Everything one visitor has built (as keys into the store) and nobody else sees."""

    key: str
    source: str = ""
    original_key: str = ""
    info: dict = field(default_factory=dict)
    scores: pd.DataFrame | None = None
    score_settings: dict = field(default_factory=dict)
    calibration: Any = None             # token ids used for scoring / pruning
    removed: pd.DataFrame | None = None  # the groups the last preview / prune removes (for the views)
    prune_key: str | None = None
    recipe: dict = field(default_factory=dict)
    recovery: Any = None                # a LoraRecovery being trained (this visitor's own)
    recovery_key: str | None = None     # a finished recovery in the store
    recovery_data: str = ""             # the data source of this session's recovery
    merged_key: str | None = None
    evaluations: list = field(default_factory=list)
    steps: dict = field(default_factory=dict)     # the inputs of each step run: replayed after a restart
    rebuild: dict = field(default_factory=dict)   # store key -> (kind, spec, fn) to recompute if evicted
    last_used: float = field(default_factory=time.time)

    def store_keys(self) -> set[str]:
        keys = {self.original_key, self.prune_key, self.recovery_key, self.merged_key,
                self.score_settings.get("key")}
        return {k for k in keys if k}

    def remember(self, key: str, kind: str, spec: dict, fn: Callable[[], Any]) -> None:
        self.rebuild[key] = (kind, spec, fn)

    def value(self, store: Store, key: str | None):
        """A result this session refers to; recomputed (same spec, same value) if it was evicted."""
        if key is None:
            return None
        found = store.peek(key)
        if found is not None:
            return found
        if key not in self.rebuild:
            raise SessionError("A result of this session was freed to make room and cannot be rebuilt: "
                               "run that step again.")
        kind, spec, fn = self.rebuild[key]
        return store.compute(kind, spec, fn)[0]

    def original(self, store: Store):
        found = store.loaded_original(self.original_key)
        if found is None:
            raise SessionError("The model this session loaded was freed while the session was idle: "
                               "press Load model again (your settings are kept).")
        return found

    def models(self, store: Store) -> dict:
        """The models this session can compare, by display name."""
        out = {"original": self.original(store).model}
        if self.prune_key:
            out["pruned"] = self.value(store, self.prune_key)["model"]
        if self.merged_key:
            out["pruned + LoRA"] = self.value(store, self.merged_key)
        return out

    def model_keys(self) -> dict:
        """Display name -> the store key that identifies that model's content."""
        keys = {"original": self.original_key, "pruned": self.prune_key, "pruned + LoRA": self.merged_key}
        return {name: key for name, key in keys.items() if key}


class SessionRegistry:
    """Visitor key -> Session, with a time-to-live and honest messages about what happened."""

    def __init__(self, store: Store, ttl_s: float = SESSION_TTL_S):
        self.store, self.ttl_s = store, ttl_s
        self._sessions: dict[str, Session] = {}
        self._aliases: dict[str, str] = {}          # Gradio session hash -> visitor key
        self._expired: dict[str, float] = {}        # visitor key -> when it expired
        self._lock = threading.Lock()
        store.in_use = self.live_store_keys

    def visitor(self, session_hash: str) -> str:
        """The visitor key of a connection: the browser's stored key, else the connection's hash
        (API clients)."""
        with self._lock:
            return self._aliases.get(session_hash, session_hash)

    def alias(self, session_hash: str, visitor_key: str) -> None:
        with self._lock:
            self._aliases[session_hash] = visitor_key

    def _sweep(self) -> None:
        now = time.time()
        for key in [k for k, s in self._sessions.items() if now - s.last_used > self.ttl_s]:
            del self._sessions[key]
            self._expired[key] = now

    def put(self, session: Session) -> Session:
        """Install a fully built session (replacing the visitor's previous one)."""
        with self._lock:
            self._sweep()
            session.last_used = time.time()
            self._sessions[session.key] = session
            self._expired.pop(session.key, None)
        return session

    def find(self, key: str) -> Session | None:
        with self._lock:
            self._sweep()
            session = self._sessions.get(key)
            if session is not None:
                session.last_used = time.time()
            return session

    def get(self, key: str) -> Session:
        """The visitor's session, or a message that says what really happened."""
        session = self.find(key)
        if session is not None:
            return session
        if key in self._expired:
            idle = self.ttl_s / 60
            raise SessionError(f"Your session expired after {idle:.0f} idle minutes and its models were "
                               "freed for other visitors: load a model again in the Model tab.")
        raise SessionError("No model loaded in this session yet: load one in the Model tab.")

    def expired(self, key: str) -> bool:
        with self._lock:
            self._sweep()
            return key in self._expired

    def drop(self, key: str) -> None:
        with self._lock:
            self._sessions.pop(key, None)

    def live_store_keys(self) -> set[str]:
        with self._lock:
            keys = set()
            for s in self._sessions.values():
                keys |= s.store_keys()
            return keys

    def __len__(self) -> int:
        return len(self._sessions)
