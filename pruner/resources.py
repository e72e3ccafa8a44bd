"""What memory this process really has: the container's limit, not the host's.

In a container `/proc/meminfo` shows the host. The limit that the kernel enforces is the cgroup's:
v2 `memory.max` (the process's own cgroup and every parent up to the root; "max" = none), v1
`memory/memory.limit_in_bytes` (a huge value = none). The limit used is the smallest of the cgroup
limit, MemAvailable at start and, for work that stays on a GPU, that GPU's memory;
$PRUNING_STUDIO_MEMORY_GB overrides all of them. Under ZeroGPU models live in CPU RAM between
calls, so RAM is the limit that matters there.

Paths are parameters so tests can point them at fake files.
"""

from __future__ import annotations

import functools
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

MEMORY_ENV = "PRUNING_STUDIO_MEMORY_GB"
CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_SELF_CGROUP = Path("/proc/self/cgroup")
MEMINFO = Path("/proc/meminfo")
UNLIMITED_V1 = 1 << 60          # v1 reports "no limit" as a page-aligned 2**63 - 1


@dataclass(frozen=True)
class MemoryLimit:
    bytes: int
    source: str          # which limit won, in words

    @property
    def gb(self) -> float:
        return self.bytes / 2**30


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if text == "max" or not text:
        return None
    try:
        return int(text)
    except ValueError:
        return None


def _own_cgroup_path(proc_self_cgroup: Path, controller: str | None) -> str:
    """The process's cgroup path: v2's "0::/path", or v1's line for `controller`."""
    try:
        lines = proc_self_cgroup.read_text().splitlines()
    except OSError:
        return "/"
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if controller is None and parts[0] == "0" and parts[1] == "":
            return parts[2] or "/"
        if controller is not None and controller in parts[1].split(","):
            return parts[2] or "/"
    return "/"


def _v2_groups(root: Path, proc_self_cgroup: Path) -> list[Path]:
    """cgroup v2: the process's own group folder, then each parent up to the root (a limit set on
    any of them applies)."""
    own = _own_cgroup_path(Path(proc_self_cgroup), None).strip("/")
    folder, chain = (root / own if own else root), []
    while True:
        chain.append(folder)
        if folder == root or root not in folder.parents:
            return chain
        folder = folder.parent


def cgroup_limit(root: Path = CGROUP_ROOT, proc_self_cgroup: Path = PROC_SELF_CGROUP) -> tuple[int, str] | None:
    """(bytes, which file) of the tightest cgroup memory limit over this process, or None."""
    root = Path(root)
    if (root / "cgroup.controllers").exists() or (root / "memory.max").exists():      # v2
        found = [(value, f"cgroup v2 {folder / 'memory.max'}") for folder in _v2_groups(root, proc_self_cgroup)
                 if (value := _read_int(folder / "memory.max")) is not None]
        return min(found) if found else None
    memory = root / "memory"                                                            # v1
    if memory.is_dir():
        own = _own_cgroup_path(Path(proc_self_cgroup), "memory").strip("/")
        for folder in ([memory / own] if own else []) + [memory]:
            value = _read_int(folder / "memory.limit_in_bytes")
            if value is not None and value < UNLIMITED_V1:
                return value, f"cgroup v1 {folder / 'memory.limit_in_bytes'}"
    return None


THREADS_ENV = "PRUNING_STUDIO_THREADS"


def cpu_quota(root: Path = CGROUP_ROOT, proc_self_cgroup: Path = PROC_SELF_CGROUP) -> float | None:
    """CPUs the cgroup allows this process (v2 `cpu.max` "quota period", v1 cfs_quota / period),
    or None when unlimited or unreadable. A Space of 2 vCPU on a large host shows the host's cores
    to os.cpu_count() and torch; only this says 2."""
    root = Path(root)
    try:
        if (root / "cgroup.controllers").exists() or (root / "cpu.max").exists():
            found = []
            for folder in _v2_groups(root, proc_self_cgroup):
                text = (folder / "cpu.max").read_text().split() if (folder / "cpu.max").is_file() else []
                if len(text) == 2 and text[0] != "max":
                    found.append(int(text[0]) / int(text[1]))
            return min(found) if found else None
        cpu = next((root / d for d in ("cpu", "cpu,cpuacct") if (root / d).is_dir()), None)
        if cpu is not None:
            quota, period = _read_int(cpu / "cpu.cfs_quota_us"), _read_int(cpu / "cpu.cfs_period_us")
            if quota and period and quota > 0:
                return quota / period
    except (OSError, ValueError):
        return None
    return None


def usable_cores(quota: float | None = -1.0) -> int:
    """Cores this process may really use: its CPU affinity, capped by the cgroup's CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    quota = cpu_quota() if quota == -1.0 else quota
    if quota:
        cores = min(cores, max(1, int(quota + 0.5)))
    return cores


def server_threads(env: dict | None = None, cores: int | None = None) -> int:
    """Torch threads for the web server: $PRUNING_STUDIO_THREADS, else the usable cores (the
    cgroup's CPU quota counted: a 2-vCPU Space on a large host would otherwise run one OpenMP
    thread per host core), less one from 4 cores up for the web server. When OpenMP's threads
    outnumber the free cores they wait for one another and a step collapses; measured on 2 cores:
    with the other core fully busy, decoding ran at 1.8 tokens/s with 2 threads against 12.9 with
    1, but with it a quarter busy (a local browser animating progress) 2 threads were faster
    (decoding 17.1 vs 13.8 tokens/s, quick perplexity 8.4 s vs 12.5 s), so 2 cores keep both."""
    env = os.environ if env is None else env
    if env.get(THREADS_ENV):
        return max(1, int(env[THREADS_ENV]))
    cores = cores or usable_cores()
    return cores if cores <= 2 else cores - 1


def mem_available(meminfo: Path = MEMINFO) -> int | None:
    try:
        for line in Path(meminfo).read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def gpu_memory() -> int | None:
    """Total memory of the first CUDA device, where models stay on it between calls (not ZeroGPU)."""
    if os.environ.get("SPACES_ZERO_GPU"):
        return None
    try:
        import torch

        if torch.cuda.is_available():
            return int(torch.cuda.get_device_properties(0).total_memory)
    except Exception:  # noqa: BLE001 - no driver, no device
        return None
    return None


def memory_limit(env: dict | None = None, root: Path = CGROUP_ROOT, proc_self_cgroup: Path = PROC_SELF_CGROUP,
                 meminfo: Path = MEMINFO, gpu_bytes: int | None = -1) -> MemoryLimit:
    """The memory this process may use: $PRUNING_STUDIO_MEMORY_GB, else the smallest of the cgroup
    limit, MemAvailable now, and the GPU's memory (`gpu_bytes=-1`: ask torch)."""
    env = os.environ if env is None else env
    if env.get(MEMORY_ENV):
        return MemoryLimit(int(float(env[MEMORY_ENV]) * 2**30), f"${MEMORY_ENV}")
    candidates = []
    limit = cgroup_limit(root, proc_self_cgroup)
    if limit is not None:
        candidates.append(limit)
    available = mem_available(meminfo)
    if available is not None:
        candidates.append((available, "MemAvailable in /proc/meminfo"))
    gpu = gpu_memory() if gpu_bytes == -1 else gpu_bytes
    if gpu:
        candidates.append((gpu, "GPU memory"))
    if not candidates:
        return MemoryLimit(8 * 2**30, "a fallback of 8 GiB (no limit could be read)")
    value, source = min(candidates)
    return MemoryLimit(int(value), source)


MMAP_THRESHOLD = 256 * 1024
REUSE_THRESHOLD = 32 * 2**20    # above one 128-position chunk of float32 logits at a 49k vocabulary
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


@functools.cache
def _libc():
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt, libc.malloc_trim     # glibc only
        return libc
    except (OSError, AttributeError):
        return None


class _Allocator:
    """The process's glibc allocator mode: `bounded` after return_large_frees_to_os(); inside
    `reusing_freed_memory()` (counted across threads) large frees stay in the heap."""

    def __init__(self):
        import threading

        self.lock = threading.Lock()
        self.bounded_threshold: int | None = None   # set once the bounded mode is applied
        self.reusers = 0
        self.phases = 0                             # reuse phases entered (for tests)
        self.pending_trim = None                    # the timer of the trim after the last phase

    def set_threshold(self, threshold: int, trim_threshold: int | None = None) -> bool:
        """Allocations over `threshold` get their own mapping; glibc trims the heap's top by
        itself at a free once `trim_threshold` (4 x threshold unless given) bytes lie free there."""
        libc = _libc()
        trim = 4 * threshold if trim_threshold is None else trim_threshold
        return libc is not None and bool(libc.mallopt(_M_MMAP_THRESHOLD, threshold)) and \
            bool(libc.mallopt(_M_TRIM_THRESHOLD, trim))


ALLOCATOR = _Allocator()


def return_large_frees_to_os(threshold: int = MMAP_THRESHOLD) -> bool:
    """glibc: serve every allocation over `threshold` bytes from its own mapping, handed back to
    the OS when freed. By default glibc raises that threshold as large blocks are freed (up to
    32 MiB), so freed gradients and activations stay in the heap and a server's RSS keeps what it
    once used (measured: Taylor scoring of the default model left 0.5x its weights of freed memory
    resident). A 4 MiB threshold everywhere was tried and rejected: a heap grown by an earlier
    step was reused and low-memory Taylor scoring peaked at 1.84-2.03x its weights instead of
    1.43-1.50x. The page faults this costs are paid back where they matter with
    `reusing_freed_memory()`. True where applied (Linux with glibc)."""
    with ALLOCATOR.lock:
        applied = ALLOCATOR.set_threshold(threshold)
        ALLOCATOR.bounded_threshold = threshold if applied else None
        return applied


TRIM_DELAY_S = 1.0     # how long a phase's freed heap waits for the next phase before going back
NEVER_TRIM = -1        # mallopt(M_TRIM_THRESHOLD, -1): glibc never trims the heap's top by itself


@contextmanager
def reusing_freed_memory(trim_delay_s: float = TRIM_DELAY_S):
    """Inside: allocations up to REUSE_THRESHOLD come from the heap and are reused when freed
    (no fresh, zero-filled pages for every activation; glibc's own trim of the heap's top at a
    free is off: it handed back whatever a step freed past 4 x REUSE_THRESHOLD); on leaving (the
    last thread to leave), new large blocks get their own mappings again while the freed heap
    stays, and TRIM_DELAY_S later, unless a phase has begun again by then, malloc_trim hands
    every free heap page back to the OS and the automatic trim returns, so RSS falls back to
    what is live
    (`free_bytes` trims at once). The delay lets back-to-back phases (the steps of a training run,
    a perplexity's batches) keep one heap: trimming after every step faulted the next step's
    activations in afresh, 0.3 s of a 1.65 s step of the `thorough` preset on the default model
    (2 cores; the peak within a step is the same either way). For forwards and LoRA steps, never
    for low-memory scoring (whose 1.5x bound relies on the bounded mode). Measured on the default
    model, 2 cores: a LoRA step of the quick preset 2.96 s instead of 4.61 s in the bounded mode
    (peak RSS 2.98 GB instead of 2.39, within footprint.recover_peak), the quick perplexity 5.3 s
    instead of 6.7 s. `trim_delay_s=0` for a phase no other follows (the writing of calibration
    text, which scoring follows in the same step): the heap goes back at once, so a next step
    starts bounded (low-memory scoring's peak, the admission's estimates). A no-op unless the
    bounded mode was applied."""
    with ALLOCATOR.lock:
        active = ALLOCATOR.bounded_threshold is not None
        if active:
            ALLOCATOR.reusers += 1
            if ALLOCATOR.reusers == 1:
                ALLOCATOR.phases += 1
                ALLOCATOR.set_threshold(REUSE_THRESHOLD, trim_threshold=NEVER_TRIM)
    try:
        yield
    finally:
        if active:
            with ALLOCATOR.lock:
                ALLOCATOR.reusers -= 1
                if ALLOCATOR.reusers == 0:
                    if trim_delay_s > 0:          # new large blocks mapped again; the freed heap kept
                        ALLOCATOR.set_threshold(ALLOCATOR.bounded_threshold, trim_threshold=NEVER_TRIM)
                        _schedule_trim(trim_delay_s)      # until the timer (or the next phase)
                    else:
                        _trim_now()


def _schedule_trim(delay_s: float = TRIM_DELAY_S) -> None:
    """(Under ALLOCATOR.lock.) Trim `delay_s` from now, replacing a trim already waiting."""
    import threading

    if ALLOCATOR.pending_trim is not None:
        ALLOCATOR.pending_trim.cancel()
    timer = threading.Timer(delay_s, trim_if_idle)
    timer.daemon = True
    ALLOCATOR.pending_trim = timer
    timer.start()


def trim_if_idle() -> bool:
    """Hand the heap's free pages back to the OS now if a phase ended since the last trim and none
    is running; True if it trimmed."""
    with ALLOCATOR.lock:
        if ALLOCATOR.pending_trim is None or ALLOCATOR.reusers:
            return False
        _trim_now()
        return True


def _trim_now() -> None:
    """(Under ALLOCATOR.lock.) The bounded mode with glibc's own trim back, the free heap handed
    back to the OS, and no trim left waiting."""
    if ALLOCATOR.pending_trim is not None:
        ALLOCATOR.pending_trim.cancel()
        ALLOCATOR.pending_trim = None
    ALLOCATOR.set_threshold(ALLOCATOR.bounded_threshold)
    _libc().malloc_trim(0)


def free_bytes(env: dict | None = None) -> int:
    """Memory this process can still take now: the least of MemAvailable, the cgroup limit minus
    this process's RSS, and $PRUNING_STUDIO_MEMORY_GB minus it (RSS read after trimming the free
    heap that a finished `reusing_freed_memory` phase may still hold)."""
    from .stats import rss_bytes

    env = os.environ if env is None else env
    trim_if_idle()
    rss = rss_bytes()
    candidates = [mem_available() or 8 * 2**30]
    limit = cgroup_limit()
    if limit is not None:
        candidates.append(limit[0] - rss)
    if env.get(MEMORY_ENV):
        candidates.append(int(float(env[MEMORY_ENV]) * 2**30) - rss)
    return max(0, min(candidates))
