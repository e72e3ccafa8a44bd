"""A mixed class on one server under a memory and a disk budget, through gradio_client, against
the real app on a free local port.

30 students (by default) with six different recipes (six amounts, three criteria); a third of them
recover (the quick preset, shortened with --recover-steps) and merge; some export a zip, some a
GGUF; three load tiny bring-your-own models (Qwen2, Gemma 2, Phi-3) from a folder the server
allows ($PRUNING_STUDIO_LOCAL_ROOTS); five reload mid-lesson (a new connection presenting their
key to /reconnect, as a browser's reload does) and carry on; all at once, with PRUNING_STUDIO_MEMORY_GB (default 4) and
PRUNING_STUDIO_DISK_GB (default 2). Heavy steps run one at a time on the server, so students wait
in its queue: a wait is the time from submitting a step until the server starts it (not a failure).

Prints per-step p50 / p95 latency, the waits, failures, the cache hit rate, the server's peak RSS
and the export folder's peak size; the last stdout line is one JSON object
{"students", "failures", "waits", "p95_s", "peak_rss_gb", "disk_gb", "hit_rate", ...}.
Targets: 0 failures, peak RSS <= 1.1 x the memory budget, disk within its budget.

    python bench/classroom.py                           # 30 students, 4 GB, 2 GB of disk
    python bench/classroom.py --students 10 --memory-gb 3
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from components.exports import folder_bytes  # noqa: E402
from components.lesson import status_of  # noqa: E402

AMOUNTS = (0.1, 0.15, 0.2, 0.25, 0.3, 0.4)
CRITERIA = ("taylor-element1", "taylor-vector", "l2")
BYO_FAMILIES = ("qwen2", "gemma2", "phi3")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def peak_rss_gb(pid: int) -> float:
    """The process's high-water resident set (VmHWM), in GB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 2**30
    return 0.0


def start_server(port: int, log_path: Path, env_extra: dict) -> subprocess.Popen:
    env = dict(os.environ, GRADIO_SERVER_PORT=str(port), PRUNING_STUDIO_WARM_START="0",
               HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False", **env_extra)
    log = open(log_path, "w")
    return subprocess.Popen([sys.executable, "app.py"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)


def byo_models(root: Path) -> dict[str, str]:
    """Tiny models of other families, saved as a student would bring them (with a tokenizer)."""
    from families import tiny_family_model, tiny_tokenizer

    tokenizer = tiny_tokenizer(128)
    folders = {}
    for family in BYO_FAMILIES:
        folder = root / f"tiny-{family}"
        tiny_family_model(family, vocab=len(tokenizer), num_hidden_layers=6).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        folders[family] = str(folder)
    return folders


def timed_step(client, endpoint: str, kwargs: dict) -> tuple[float, float, object]:
    """(seconds waiting in the server's queue, seconds in all, result) of one endpoint call."""
    from gradio_client.utils import Status

    start = time.perf_counter()
    job = client.submit(api_name=endpoint, **kwargs)
    started = None
    while not job.done():
        if started is None and job.status().code in (Status.PROCESSING, Status.ITERATING):
            started = time.perf_counter()
        time.sleep(0.1)
    result = job.result()
    end = time.perf_counter()
    return (started or end) - start, end - start, result


def lesson_of(i: int, byo: dict[str, str], recover_steps: int) -> list[tuple[str, str, dict]]:
    """Student i's steps: (name, endpoint, keyword arguments)."""
    if i < len(BYO_FAMILIES):                          # bring-your-own: 6 layers, all of them pruned
        family = BYO_FAMILIES[i]
        ranges = dict(attn_start=0, attn_end=6, mlp_start=0, mlp_end=6)
        return [("load", "/load_model", {"source_kind": "hub id or local folder", "custom": byo[family]}),
                ("score", "/score", {"zoom_layer": 0}),
                ("prune", "/prune", {**ranges, "amount": 0.2, "unit": "groups"}),
                ("compare", "/compare", {"max_tokens": 16})]
    recipe = i % len(AMOUNTS)                      # six recipes: an amount each, three criteria
    amount, criterion = AMOUNTS[recipe], CRITERIA[recipe % len(CRITERIA)]
    steps = [("load", "/load_model", {}),
             ("score", "/score", {"criterion": criterion}),
             ("prune", "/prune", {"amount": amount, "criterion": criterion}),
             ("compare", "/compare", {})]
    if 10 <= i < 15:                               # five students reload the page mid-lesson
        steps += [("reload", "/reconnect", {})]
    if i % 3 == 0:
        steps += [("recover", "/recover", {"steps": recover_steps}), ("merge", "/merge", {})]
    if i % 5 == 1:
        steps += [("export", "/export", {"which": "pruned"})]
    if i % 10 == 2:
        steps += [("gguf", "/export_gguf", {"which": "pruned"})]
    return steps


def connect(url: str, deadline: float):
    from gradio_client import Client

    while time.time() < deadline:
        try:
            return Client(url, verbose=False)
        except Exception:  # noqa: BLE001 - not up yet
            time.sleep(1)
    raise TimeoutError(f"the app did not answer at {url}")


def percentile(values, q):
    values = sorted(values)
    if not values:
        return None
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--students", type=int, default=30)
    parser.add_argument("--memory-gb", type=float, default=4.0)
    parser.add_argument("--disk-gb", type=float, default=2.0)
    parser.add_argument("--recover-steps", type=int, default=8, help="LoRA steps of the quick preset")
    parser.add_argument("--time-limit", type=float, default=3600, help="seconds for the whole class")
    parser.add_argument("--log", default=str(REPO / "bench" / "results" / "classroom-server.log"))
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="classroom-"))
    byo = byo_models(work / "models")
    exports = work / "exports"
    env = {"PRUNING_STUDIO_MEMORY_GB": str(args.memory_gb), "PRUNING_STUDIO_DISK_GB": str(args.disk_gb),
           "PRUNING_STUDIO_LOCAL_ROOTS": str(work / "models"), "PRUNING_STUDIO_EXPORT_DIR": str(exports)}
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    Path(args.log).parent.mkdir(parents=True, exist_ok=True)
    server = start_server(port, Path(args.log), env)
    timings: dict[str, list[float]] = {}
    waits: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()
    disk_peak = [0]
    stop = threading.Event()

    def watch_disk():
        while not stop.is_set():
            disk_peak[0] = max(disk_peak[0], folder_bytes(exports))
            time.sleep(0.5)

    try:
        first = connect(url, time.time() + 300)

        def student(i: int):
            try:
                client = connect(url, time.time() + 120)
                for name, endpoint, kwargs in lesson_of(i, byo, args.recover_steps):
                    if name == "reload":                # a new connection presenting the old key
                        kwargs = {"visitor_key": client.session_hash}
                        client = connect(url, time.time() + 120)
                    wait, total, result = timed_step(client, endpoint, kwargs)
                    if name == "reload" and "Welcome back" not in status_of(result):
                        raise RuntimeError(f"reload lost the session: {status_of(result)}")
                    with lock:
                        timings.setdefault(name, []).append(total)
                        waits.append(wait)
                    status = status_of(result)
                    if status.startswith("**Error:**"):
                        raise RuntimeError(f"{name}: {status}")
            except Exception as err:  # noqa: BLE001 - counted as a failure
                with lock:
                    failures.append(f"student {i}: {type(err).__name__}: {str(err)[:300]}")

        threading.Thread(target=watch_disk, daemon=True).start()
        start = time.perf_counter()
        threads = [threading.Thread(target=student, args=(i,), daemon=True) for i in range(args.students)]
        for t in threads:
            t.start()
            time.sleep(0.5)                       # students arrive within a quarter of a minute
        for t in threads:
            t.join(timeout=max(1.0, args.time_limit - (time.perf_counter() - start)))
        wall = time.perf_counter() - start
        unfinished = sum(t.is_alive() for t in threads)
        failures += [f"{unfinished} students did not finish within {args.time_limit:.0f}s"] if unfinished else []
        stats = first.predict(api_name="/server_stats")
        rss = peak_rss_gb(server.pid)
    finally:
        stop.set()
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()

    queued = [w for w in waits if w > 1.0]
    print(f"{args.students} students, mixed recipes, memory budget {args.memory_gb} GB, disk {args.disk_gb} GB: "
          f"{wall:.0f}s")
    for name, values in timings.items():
        print(f"  {name:>8}: p50 {statistics.median(values):6.1f}s  p95 {percentile(values, 0.95):6.1f}s  "
              f"(n={len(values)})")
    print(f"  waits in the queue (> 1 s): {len(queued)} of {len(waits)} steps, p95 {percentile(waits, 0.95):.1f}s; "
          f"admission waits for memory: {stats.get('waits', 0)}")
    for failure in failures:
        print("  FAILED " + failure)
    print(f"cache: {stats['hits']} hits, {stats['misses']} misses (hit rate {stats['hit_rate']:.2f}); "
          f"store {stats['used_gb']:.2f} of {stats['budget_gb']:.2f} GB; server peak RSS {rss:.2f} GB; "
          f"exports peak {disk_peak[0] / 2**30:.2f} GB; models moved to disk {stats.get('spills', 0)} times, "
          f"read back {stats.get('restores', 0)} times")
    summary = {"students": args.students, "failures": len(failures), "waits": len(queued),
               "p95_s": round(percentile(waits, 0.95) or 0.0, 1),
               "step_p95_s": {k: round(percentile(v, 0.95), 1) for k, v in timings.items()},
               "peak_rss_gb": round(rss, 3), "disk_gb": round(disk_peak[0] / 2**30, 3),
               "hit_rate": round(stats["hit_rate"], 3), "memory_gb": args.memory_gb, "disk_budget_gb": args.disk_gb,
               "wall_s": round(wall, 1), "spills": stats.get("spills", 0), "restores": stats.get("restores", 0)}
    print(json.dumps(summary))
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
