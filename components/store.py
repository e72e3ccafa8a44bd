"""What a class shares on one server: one read-only original per model source, and every result
(scores, pruned models, recoveries, generations, evaluations, exports) memoised by a content hash
of what determines it, inside one memory budget.

- `Store.original(source)` loads a source once; every session that loads it gets the same object,
  which nothing mutates (pruning, recovery and contrast work on copies).
- `Store.compute(kind, spec, fn)` returns the cached value for `spec` or runs `fn()` once, even
  when several visitors ask at the same moment (the others wait for the first); `hit` says which.
- Memory: values are sized (model weights, DataFrame bytes); when a new value would exceed the
  budget, least recently used results go first (those no live session refers to before the
  rest), then originals no session uses. If that cannot make room the request is refused with a
  message that says why and when to retry.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

import pandas as pd


class CapacityError(RuntimeError):
    """The server's memory budget is full: the message says why and when to retry."""


def content_key(kind: str, spec: dict) -> str:
    """A stable hash of everything that determines a result."""
    text = json.dumps({"kind": kind, **spec}, sort_keys=True, default=str)
    return f"{kind}:{hashlib.sha256(text.encode()).hexdigest()[:20]}"


def size_of(value: Any, _seen: set | None = None, _depth: int = 0) -> int:
    """Bytes a cached value holds: model weights and tensors (each storage once, tied weights
    included), DataFrames, and what containers / plain objects hold, a few levels deep."""
    import torch

    seen = set() if _seen is None else _seen
    if id(value) in seen or _depth > 4:
        return 0
    seen.add(id(value))
    if isinstance(value, torch.nn.Module):
        total = 0
        for t in list(value.parameters()) + list(value.buffers()):
            if id(t) not in seen:
                seen.add(id(t))
                total += t.numel() * t.element_size()
        return total
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, pd.DataFrame):
        return int(value.memory_usage(deep=True).sum())
    if isinstance(value, (str, bytes)):
        return len(value)
    if isinstance(value, dict):
        return 64 * len(value) + sum(size_of(v, seen, _depth + 1) for v in value.values())
    if isinstance(value, (list, tuple)):
        return 16 * len(value) + sum(size_of(v, seen, _depth + 1) for v in value[:10_000])
    if hasattr(value, "__dict__") and not isinstance(value, type):
        return sum(size_of(v, seen, _depth + 1) for v in vars(value).values())
    return 64


def default_budget_bytes() -> int:
    """$PRUNING_STUDIO_MEMORY_GB, else 70% of the GPU's memory (when one is present) or of the RAM
    available at start-up."""
    if os.environ.get("PRUNING_STUDIO_MEMORY_GB"):
        return int(float(os.environ["PRUNING_STUDIO_MEMORY_GB"]) * 2**30)
    try:
        import torch

        if torch.cuda.is_available() and not os.environ.get("SPACES_ZERO_GPU"):
            return int(0.7 * torch.cuda.get_device_properties(0).total_memory)
    except Exception:   # noqa: BLE001 - any failure here falls back to RAM
        pass
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        return int(0.7 * int(info["MemAvailable"].split()[0]) * 1024)
    except (OSError, KeyError, ValueError):
        return 8 * 2**30


@dataclass
class Entry:
    key: str
    kind: str
    value: Any
    nbytes: int
    created: float = field(default_factory=time.time)
    last_used: float = field(default_factory=time.time)
    hits: int = 0


@dataclass
class Original:
    """One loaded source, shared read-only by every session that loads it."""

    key: str
    source: str
    model: Any
    tokenizer: Any
    info: dict
    nbytes: int
    last_used: float = field(default_factory=time.time)


class Store:
    def __init__(self, budget_bytes: int | None = None):
        self.budget = budget_bytes if budget_bytes is not None else default_budget_bytes()
        self._entries: OrderedDict[str, Entry] = OrderedDict()
        self._originals: dict[str, Original] = {}
        self._lock = threading.RLock()
        self._computing: dict[str, threading.Lock] = {}
        self.hits = self.misses = 0
        self.in_use: Callable[[], set[str]] = set     # keys live sessions refer to (set by the registry)

    # ------------------------------------------------------------------ accounting
    def used_bytes(self) -> int:
        with self._lock:
            return sum(e.nbytes for e in self._entries.values()) + \
                sum(o.nbytes for o in self._originals.values())

    def stats(self) -> dict:
        with self._lock:
            total = self.hits + self.misses
            return {"hits": self.hits, "misses": self.misses, "hit_rate": self.hits / total if total else 0.0,
                    "entries": len(self._entries), "originals": len(self._originals),
                    "used_gb": self.used_bytes() / 2**30, "budget_gb": self.budget / 2**30}

    def _make_room(self, nbytes: int, protect: set[str] = frozenset()) -> None:
        """Evict until `nbytes` more fit: unreferenced results first (LRU), then referenced ones,
        then originals no session uses. Raise CapacityError if it still does not fit."""
        if self.used_bytes() + nbytes <= self.budget:
            return
        live = set(self.in_use())
        ordered = sorted(self._entries.values(), key=lambda e: (e.key in live, e.last_used))
        for entry in ordered:
            if self.used_bytes() + nbytes <= self.budget:
                break
            if entry.key not in protect:
                del self._entries[entry.key]
        for original in sorted(self._originals.values(), key=lambda o: o.last_used):
            if self.used_bytes() + nbytes <= self.budget:
                break
            if original.key not in live and original.key not in protect:
                del self._originals[original.key]
        gc.collect()
        if self.used_bytes() + nbytes > self.budget:
            raise CapacityError(
                f"The server's memory is full: this needs {nbytes / 2**30:.2f} GB more, "
                f"{self.used_bytes() / 2**30:.2f} of {self.budget / 2**30:.2f} GB are held by models "
                "visitors are using right now. Please retry in a few minutes, when idle sessions "
                "have expired (or use a smaller model).")

    def reserve(self, nbytes: int) -> None:
        """Make room for `nbytes` that a caller is about to allocate outside the store (a model
        being loaded, a LoRA copy in training)."""
        with self._lock:
            self._make_room(nbytes)

    # ------------------------------------------------------------------ originals
    def original(self, key: str, source: str, load: Callable[[], tuple], estimate: int = 0) -> tuple[Original, bool]:
        """The shared original for `key` (loading it with `load()` -> (model, tokenizer, info) once).
        Returns (original, was_already_loaded)."""
        lock = self._compute_lock(key)
        with lock:
            with self._lock:
                found = self._originals.get(key)
                if found is not None:
                    found.last_used = time.time()
                    self.hits += 1
                    return found, True
                self._make_room(estimate)
            model, tokenizer, info = load()
            for p in model.parameters():
                p.requires_grad_(False)
            with self._lock:
                self.misses += 1
                original = Original(key, source, model, tokenizer, info, size_of(model))
                self._make_room(0, protect={key})
                self._originals[key] = original
                return original, False

    def loaded_original(self, key: str) -> Original | None:
        with self._lock:
            found = self._originals.get(key)
            if found is not None:
                found.last_used = time.time()
            return found

    # ------------------------------------------------------------------ results
    def _compute_lock(self, key: str) -> threading.Lock:
        with self._lock:
            return self._computing.setdefault(key, threading.Lock())

    def peek(self, key: str) -> Any | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            entry.last_used = time.time()
            self._entries.move_to_end(key)
            return entry.value

    def lookup(self, key: str) -> Any | None:
        """A cached value by key (counted as a hit), or None (not counted: the caller computes it
        and `put`s it with miss=True)."""
        with self._lock:
            value = self.peek(key)
            if value is not None:
                self.hits += 1
                self._entries[key].hits += 1
            return value

    def compute(self, kind: str, spec: dict, fn: Callable[[], Any]) -> tuple[Any, bool, str]:
        """(value, hit, key): the cached value for (kind, spec), or fn() computed once and cached."""
        key = content_key(kind, spec)
        found = self.lookup(key)
        if found is not None:
            return found, True, key
        with self._compute_lock(key):          # an identical request in flight: wait for it
            found = self.lookup(key)
            if found is not None:
                return found, True, key
            value = fn()
            self.put(key, kind, value, miss=True)
            return value, False, key

    def put(self, key: str, kind: str, value: Any, miss: bool = False) -> str:
        nbytes = size_of(value)
        with self._lock:
            if miss:
                self.misses += 1
            self._entries.pop(key, None)
            self._make_room(nbytes)
            self._entries[key] = Entry(key, kind, value, nbytes)
        return key

    def drop(self, key: str) -> None:
        with self._lock:
            self._entries.pop(key, None)
