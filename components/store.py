"""What a class shares on one server: one read-only original per model source, and every result
(scores, pruned models, recoveries, generations, evaluations, exports) memoised by a content hash
of what determines it, inside one memory budget.

- `Store.original(source)` loads a source once; every session that loads it gets the same object,
  which nothing mutates (pruning, recovery and contrast work on copies).
- `Store.compute(kind, spec, fn)` returns the cached value for `spec` or runs `fn()` once, even
  when several visitors ask at the same moment (the others wait for the first); `hit` says which.
- Memory: the budget is the process's memory limit (the container's cgroup limit, MemAvailable,
  the GPU's memory or $PRUNING_STUDIO_MEMORY_GB: pruner.resources) less what the server itself
  held at start and a margin. Held values are sized (model weights, DataFrame bytes); every heavy
  step is *admitted* with its transient peak stated beforehand (pruner.footprint) and holds it
  while it runs, so held + in flight stays within the budget: admission evicts least recently
  used results first (those no live session refers to before the rest, then originals no session
  uses), waits in line while other steps hold memory (saying so), and refuses with the numbers
  when the step could never fit.
"""

from __future__ import annotations

import gc
import hashlib
import json
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable

import pandas as pd

from pruner.stats import release_freed_memory


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


ADMISSION_TIMEOUT_S = 600.0     # a step waits in line at most this long for memory to free up


def overhead_bytes(limit_bytes: int) -> int:
    """What the server itself needs beside the store: its RSS now (Python, torch, Gradio) and a
    margin for what grows with use (tokenizers, buffers, allocator slack)."""
    from pruner.stats import rss_bytes

    return rss_bytes() + max(256 * 2**20, int(0.05 * limit_bytes))


def default_budget_bytes() -> int:
    """The memory limit of this process (pruner.resources.memory_limit) less `overhead_bytes`."""
    from pruner.resources import memory_limit

    limit = memory_limit().bytes
    return max(256 * 2**20, limit - overhead_bytes(limit))


@dataclass
class Entry:
    key: str
    kind: str
    value: Any
    nbytes: int
    created: float = field(default_factory=time.time)
    last_used: float = field(default_factory=time.time)
    hits: int = 0
    spilled: Any = None           # the folder holding its tensors while it is on disk (see spill.py)
    resident_bytes: int = 0       # its size in memory, while spilled


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
        self._in_flight: dict[int, int] = {}           # thread id -> bytes its admitted step holds
        self._line: list[int] = []                     # tickets of steps waiting for memory, in order
        self._freed = threading.Condition(self._lock)
        self.waits: list[float] = []                   # seconds each admitted step waited for memory
        self._durations: list[float] = []              # seconds the last admitted steps ran (estimates)
        self.hits = self.misses = 0
        self.in_use: Callable[[], set[str]] = set     # keys live sessions refer to (set by the registry)
        self.on_evict: Callable[[Entry], None] = lambda entry: None   # e.g. delete an export's files
        self.spill = None       # a components.spill.Spill: models go to disk instead of being dropped
        self.spills = self.restores = 0

    # ------------------------------------------------------------------ accounting
    def used_bytes(self) -> int:
        with self._lock:
            return sum(e.nbytes for e in self._entries.values()) + \
                sum(o.nbytes for o in self._originals.values())

    def in_flight_bytes(self, exclude_own: bool = False) -> int:
        """Transient bytes admitted steps hold now (the calling thread's own step left out on
        request: its result is part of its stated peak)."""
        with self._lock:
            own = threading.get_ident() if exclude_own else None
            return sum(b for t, b in self._in_flight.items() if t != own)

    def stats(self) -> dict:
        with self._lock:
            total = self.hits + self.misses
            return {"hits": self.hits, "misses": self.misses, "hit_rate": self.hits / total if total else 0.0,
                    "entries": len(self._entries), "originals": len(self._originals),
                    "used_gb": self.used_bytes() / 2**30, "budget_gb": self.budget / 2**30,
                    "in_flight_gb": self.in_flight_bytes() / 2**30, "waiting": len(self._line),
                    "waits": len(self.waits), "spilled": sum(e.spilled is not None for e in self._entries.values()),
                    "spills": self.spills, "restores": self.restores}

    def fits_now(self, nbytes: int) -> bool:
        """Whether `nbytes` more fit the budget without evicting anything (a step choosing between
        a fast and a frugal mode asks this)."""
        with self._lock:
            return self._fits(nbytes)

    def _fits(self, nbytes: int) -> bool:
        return self.used_bytes() + self.in_flight_bytes(exclude_own=True) + nbytes <= self.budget

    def _evict_for(self, nbytes: int, protect: set[str] = frozenset()) -> bool:
        """Evict until `nbytes` more fit: unreferenced results first (LRU), then referenced ones
        (their sessions rebuild them on demand), then originals no session uses."""
        if self._fits(nbytes):
            return True
        live = set(self.in_use())
        ordered = sorted(self._entries.values(), key=lambda e: (e.key in live, e.last_used))
        for entry in ordered:
            if self._fits(nbytes):
                break
            if entry.key in protect or entry.spilled is not None:
                continue
            moved = self.spill.out(entry.key, entry.value) if self.spill is not None else None
            if moved is not None:       # on disk: comes back on its next use instead of being recomputed
                entry.value, entry.spilled = moved
                entry.resident_bytes, entry.nbytes = entry.nbytes, 0
                self.spills += 1
            else:
                del self._entries[entry.key]
                self.on_evict(entry)
        for original in sorted(self._originals.values(), key=lambda o: o.last_used):
            if self._fits(nbytes):
                break
            if original.key not in live and original.key not in protect:
                del self._originals[original.key]
        gc.collect()
        release_freed_memory()
        return self._fits(nbytes)

    def _full(self, nbytes: int, what: str = "this") -> CapacityError:
        return CapacityError(
            f"The server's memory is full: {what} needs {nbytes / 2**30:.2f} GB more, "
            f"{self.used_bytes() / 2**30:.2f} GB are held by models visitors are using and "
            f"{self.in_flight_bytes(exclude_own=True) / 2**30:.2f} GB by steps running now, of "
            f"{self.budget / 2**30:.2f} GB. Please retry in a few minutes, when idle sessions have "
            "expired (or use a smaller model).")

    def _make_room(self, nbytes: int, protect: set[str] = frozenset()) -> None:
        if not self._evict_for(nbytes, protect):
            raise self._full(nbytes)

    def reserve(self, nbytes: int) -> None:
        """Make room for `nbytes` that a caller is about to allocate outside the store."""
        with self._lock:
            self._make_room(nbytes)

    @contextmanager
    def admit(self, step: str, peak_bytes: int, progress=None, timeout_s: float = ADMISSION_TIMEOUT_S):
        """Run a heavy step holding `peak_bytes` (its stated transient peak, result included).

        Refused at once when the step could never fit the budget; otherwise evicts what it can
        and, while other steps hold the memory it needs, waits in line (first come, first
        served), telling `progress` its position; refused after `timeout_s` of waiting."""
        me = threading.get_ident()
        if me in self._in_flight:          # nested inside an admitted step: already counted
            yield
            return
        peak_bytes = int(peak_bytes)
        if peak_bytes > self.budget:
            raise CapacityError(
                f"{step} needs about {peak_bytes / 2**30:.2f} GB at its peak, more than the "
                f"{self.budget / 2**30:.2f} GB this server has for work (its memory limit less what "
                "the server itself holds). Use a smaller model, fewer calibration samples or a "
                "shorter sequence.")
        start = time.monotonic()
        with self._freed:
            ticket = object()
            self._line.append(id(ticket))
            try:
                while True:
                    first = self._line[0] == id(ticket)
                    if first and self._evict_for(peak_bytes):
                        break
                    if first and not self._in_flight:  # nothing will free memory by finishing
                        raise self._full(peak_bytes, step)
                    waited = time.monotonic() - start
                    if waited > timeout_s:
                        raise self._full(peak_bytes, step)
                    if progress:
                        position = self._line.index(id(ticket)) + 1
                        recent = self._durations[-20:]
                        eta = f", about {position * sum(recent) / len(recent):.0f} s" if recent else ""
                        progress(0.0, desc=f"waiting for memory: {position} in line{eta}; "
                                           f"{self.in_flight_bytes() / 2**30:.1f} GB held by running steps "
                                           f"({waited:.0f} s so far)")
                    self._freed.wait(timeout=1.0)
            finally:
                self._line.remove(id(ticket))
                self._freed.notify_all()
            waited = time.monotonic() - start
            if waited > 0.5:
                self.waits.append(waited)
            self._in_flight[me] = peak_bytes
        admitted = time.monotonic()
        try:
            yield
        finally:
            with self._freed:
                self._in_flight.pop(me, None)
                self._durations = self._durations[-49:] + [time.monotonic() - admitted]
                self._freed.notify_all()
            gc.collect()
            release_freed_memory()

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
            if entry.spilled is not None and not self._bring_back(entry):
                return None
            return entry.value

    def _bring_back(self, entry: Entry) -> bool:
        """Read a spilled entry's tensors back from disk (making room first); False, and the entry
        gone, when its files were deleted meanwhile; False, the entry kept on disk, when running
        steps hold the memory it needs now (the caller then recomputes it through admission,
        which waits in line, instead of failing)."""
        if not self._evict_for(entry.resident_bytes, protect={entry.key}):
            return False
        value = self.spill.back(entry.value, entry.spilled)
        if value is None:
            del self._entries[entry.key]
            return False
        entry.value, entry.spilled = value, None
        entry.nbytes, entry.resident_bytes = entry.resident_bytes, 0
        self.restores += 1
        return True

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
            old = self._entries.pop(key, None)
            if old is not None and old.spilled is not None:
                self.spill.forget(old.spilled)
            self._make_room(nbytes)
            self._entries[key] = Entry(key, kind, value, nbytes)
        return key

    def drop(self, key: str) -> None:
        with self._lock:
            entry = self._entries.pop(key, None)
            if entry is not None and entry.spilled is not None:
                self.spill.forget(entry.spilled)
