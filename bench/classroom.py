"""A class on one server: N simulated students run load -> score -> prune -> compare with the
dashboard's defaults (a fifth of them with another pruning amount), through gradio_client, against
the real app on a free local port.

First one student alone on the fresh server (nothing cached: the cost of one lesson), then N
students at once. Prints per-step p50 / p95 latency, failures, the cache hit rate and the server's
peak RSS; the last stdout line is one JSON object
{"students", "failures", "p95_s": {...}, "peak_rss_gb", "hit_rate", "wall_one_s", "wall_class_s",
 "wall_ratio"}. Targets here: 0 failures, wall_class <= 3 x wall_one, peak RSS <= 6 GB.

    python bench/classroom.py                 # 30 students
    python bench/classroom.py --students 10 --other-amount 0.3
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from components.lesson import CLASS_STEPS, run_lesson  # noqa: E402


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


def start_server(port: int, log_path: Path) -> subprocess.Popen:
    env = dict(os.environ, GRADIO_SERVER_PORT=str(port), PRUNING_STUDIO_WARM_START="0",
               HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False")
    log = open(log_path, "w")
    return subprocess.Popen([sys.executable, "app.py"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)


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
    parser.add_argument("--other-amount", type=float, default=0.3,
                        help="the pruning amount every fifth student picks instead of the default")
    parser.add_argument("--time-limit", type=float, default=1800, help="seconds for the whole class")
    parser.add_argument("--log", default=str(REPO / "bench" / "results" / "classroom-server.log"))
    args = parser.parse_args()

    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    Path(args.log).parent.mkdir(parents=True, exist_ok=True)
    server = start_server(port, Path(args.log))
    try:
        first = connect(url, time.time() + 300)
        start = time.perf_counter()
        alone = run_lesson(first, CLASS_STEPS)
        wall_one = time.perf_counter() - start
        print(f"one student alone: {wall_one:.1f}s " + json.dumps({k: round(v, 1) for k, v in alone.items()}),
              flush=True)

        timings: dict[str, list[float]] = {name: [] for name, _ in CLASS_STEPS}
        failures: list[str] = []
        lock = threading.Lock()

        def student(i: int):
            overrides = {"/prune": {"amount": args.other_amount}} if i % 5 == 4 else {}
            try:
                client = connect(url, time.time() + 120)
                result = run_lesson(client, CLASS_STEPS, overrides)
                with lock:
                    for name, seconds in result.items():
                        timings[name].append(seconds)
            except Exception as err:  # noqa: BLE001 - counted as a failure
                with lock:
                    failures.append(f"student {i}: {type(err).__name__}: {str(err)[:200]}")

        start = time.perf_counter()
        threads = [threading.Thread(target=student, args=(i,), daemon=True) for i in range(args.students)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=max(1.0, args.time_limit - (time.perf_counter() - start)))
        wall_class = time.perf_counter() - start
        unfinished = sum(t.is_alive() for t in threads)
        failures += [f"{unfinished} students did not finish within {args.time_limit:.0f}s"] if unfinished else []
        stats = first.predict(api_name="/server_stats")
        rss = peak_rss_gb(server.pid)
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()

    print(f"{args.students} students at once: {wall_class:.1f}s ({wall_class / wall_one:.2f} x one student)")
    for name, values in timings.items():
        if values:
            print(f"  {name:>8}: p50 {statistics.median(values):6.1f}s  p95 {percentile(values, 0.95):6.1f}s  "
                  f"(n={len(values)})")
    for failure in failures:
        print("  FAILED " + failure)
    print(f"cache: {stats['hits']} hits, {stats['misses']} misses (hit rate {stats['hit_rate']:.2f}); "
          f"store {stats['used_gb']:.2f} of {stats['budget_gb']:.1f} GB; server peak RSS {rss:.2f} GB")
    summary = {"students": args.students, "failures": len(failures),
               "p50_s": {k: round(statistics.median(v), 2) for k, v in timings.items() if v},
               "p95_s": {k: round(percentile(v, 0.95), 2) for k, v in timings.items() if v},
               "peak_rss_gb": round(rss, 3), "hit_rate": round(stats["hit_rate"], 3),
               "wall_one_s": round(wall_one, 1), "wall_class_s": round(wall_class, 1),
               "wall_ratio": round(wall_class / wall_one, 2)}
    print(json.dumps(summary))
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
