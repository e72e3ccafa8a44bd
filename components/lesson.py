"""The default lesson as a visitor runs it, through the app's named endpoints with every control
at its default: used by the warm start (the server walks the path once at start-up so a class
finds it cached) and by bench/classroom.py (many simulated students)."""

from __future__ import annotations

import os
import threading
import time

# (step name, endpoint, keyword overrides) -- everything else is the control's default
CLASS_STEPS = (("load", "/load_model"), ("score", "/score"), ("prune", "/prune"), ("compare", "/compare"))
FULL_STEPS = (("load", "/load_model"), ("structure", "/structure"), ("score", "/score"),
              ("preview", "/preview"), ("prune", "/prune"), ("contrast", "/contrast"),
              ("recover", "/recover"), ("merge", "/merge"), ("compare", "/compare"),
              ("evaluate", "/evaluate"), ("export", "/export"))


class StepFailed(RuntimeError):
    pass


def status_of(result) -> str:
    """The status line of an endpoint's result (its last output)."""
    last = result[-1] if isinstance(result, (list, tuple)) else result
    return last if isinstance(last, str) else ""


def run_lesson(client, steps=CLASS_STEPS, overrides: dict | None = None) -> dict[str, float]:
    """Run `steps` with defaults (plus `overrides`: endpoint -> kwargs); seconds per step.
    Raises StepFailed when a step's status line reports an error."""
    timings = {}
    for name, endpoint in steps:
        start = time.perf_counter()
        result = client.predict(api_name=endpoint, **(overrides or {}).get(endpoint, {}))
        timings[name] = time.perf_counter() - start
        status = status_of(result)
        if status.startswith("**Error:**"):
            raise StepFailed(f"{name}: {status}")
    return timings


def warm_start_enabled() -> bool:
    """$PRUNING_STUDIO_WARM_START = 1 / 0; unset: on when running on Hugging Face Spaces."""
    value = os.environ.get("PRUNING_STUDIO_WARM_START")
    if value is None:
        return bool(os.environ.get("SPACE_ID"))
    return value.strip().lower() in ("1", "true", "yes", "on")


def start_warm_start(url_of, log=print) -> threading.Thread:
    """In the background, once the server answers at `url_of()`, walk the default lesson (all but
    the export) so every student's default path is served from the cache."""
    def run():
        from gradio_client import Client

        deadline = time.time() + 600
        while time.time() < deadline:
            url = url_of()
            if url:
                try:
                    client = Client(url, verbose=False)
                    break
                except Exception:  # noqa: BLE001 - the server is not up yet
                    pass
            time.sleep(2)
        else:
            log("warm start: the server did not come up")
            return
        start = time.perf_counter()
        try:
            timings = run_lesson(client, FULL_STEPS[:-1])
            log(f"warm start: default lesson cached in {time.perf_counter() - start:.0f}s {timings}")
        except Exception as err:  # noqa: BLE001 - a failed warm start only costs speed
            log(f"warm start stopped: {err}")

    thread = threading.Thread(target=run, name="warm-start", daemon=True)
    thread.start()
    return thread
