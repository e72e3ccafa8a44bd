"""The default lesson's steps through gradio_client, without a browser: what the server itself
takes per step, to set beside `tests/test_browser.py`'s timings (test-output/lesson-timings.json),
where Chromium runs on the same cores as the server. Run the two close together: this shared
machine's speed drifts by half within an hour.

Starts the real app on a free local port (offline, nothing cached), then load -> score -> preview
-> prune -> contrast -> recover (the quick preset) -> merge -> compare -> evaluate -> export, each
with the page's defaults, one after another. Prints each step's seconds; the last stdout line is
one JSON object {step: seconds, ..., "total": seconds}, also appended to --out's "runs".

    python bench/lesson_api.py                 # bench/results/lesson-api-timings.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))

from classroom import connect, free_port, start_server, timed_step  # noqa: E402

# the browser lesson's steps (tests/test_browser.py), each endpoint at the page's defaults
STEPS = (("load", "/load_model"), ("importance", "/score"), ("preview", "/preview"), ("prune", "/prune"),
         ("contrast", "/contrast"), ("quick recovery", "/recover"), ("merge", "/merge"),
         ("compare", "/compare"), ("evaluate", "/evaluate"), ("export", "/export"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "lesson-api-timings.json"))
    parser.add_argument("--log", default="/tmp/lesson-api-server.log", help="the server's output")
    args = parser.parse_args()
    port = free_port()
    server = start_server(port, Path(args.log), {})
    timings = {}
    try:
        client = connect(f"http://127.0.0.1:{port}/", time.time() + 300)
        for name, endpoint in STEPS:
            _, seconds, _ = timed_step(client, endpoint, {})
            timings[name] = round(seconds, 1)
            print(f"{name}: {seconds:.1f} s", flush=True)
    finally:
        server.terminate()
        server.wait(timeout=60)
    timings["total"] = round(sum(timings.values()), 1)
    out = Path(args.out)
    runs = json.loads(out.read_text())["runs"] if out.exists() else []
    runs.append({"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), **timings})
    out.write_text(json.dumps({"runs": runs}, indent=2) + "\n")
    print(json.dumps(timings))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
