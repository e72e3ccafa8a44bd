"""Each heavy step's stated transient peak (pruner/footprint.py) beside its measured one, on the
default model, through the dashboard's own handlers: every block the store admits is measured
(peak RSS above its start, sampled every millisecond, the result it keeps included).

    PRUNING_STUDIO_MEMORY_GB=4 python bench/step_peaks.py    # a class server: frugal modes, ~6 min
    python bench/step_peaks.py                               # this machine's memory: fast modes

Prints one row per admitted step (estimate, measured, measured / estimate); the last stdout
line is JSON {"steps": {...}, "max_ratio": ...}. Target: every ratio <= 1 (the estimates are
upper bounds, so admission keeps the process within its limit).
"""

from __future__ import annotations

import contextlib
import json

import common  # noqa: F401  (repo on sys.path, freed memory returned to the OS)
from components import handlers
from components.session import SessionRegistry
from components.store import Store
from pruner.data import CalibrationSpec
from pruner.generate import PAPER_PROMPT, GenerationSettings
from pruner.recipes import RECIPES
from pruner.recover import preset
from pruner.stats import PeakMemory


def main() -> None:
    store = Store()          # the budget of this process: PRUNING_STUDIO_MEMORY_GB, cgroup, MemAvailable
    rows: list[dict] = []
    admit = store.admit

    @contextlib.contextmanager
    def measured_admit(step, peak_bytes, progress=None, **kw):
        with admit(step, peak_bytes, progress, **kw):
            if len(store._in_flight) == 1 and all(r.get("open") is None for r in rows):
                with PeakMemory("cpu") as mem:
                    rows.append({"step": step, "open": True})
                    yield
                rows[-1].update(estimate=int(peak_bytes), measured=int(mem.peak_above_start), open=None)
            else:
                yield

    store.admit = measured_admit
    registry = SessionRegistry(store)
    session, *_ = handlers.load(registry, store, "bench", "default")
    score_config, prune_config = RECIPES["default"]
    handlers.run_score(store, session, score_config, CalibrationSpec())
    config, notes = prune_config.normalized(session.original(store).model)
    handlers.run_prune(store, session, score_config, config, notes=notes)
    handlers.magnitude_contrast(store, session, 0.2)
    settings = preset("quick", max_steps=4)
    with store.admit("recovery", handlers.recovery_peak(store, session, settings)):
        recovery, *_ = handlers.start_recovery(store, session, settings, "lambada", "quick")
        for _ in recovery.train():
            pass
        handlers.finish_recovery(store, session, recovery)
    handlers.merge(store, session)
    for _ in handlers.compare_stream(store, session, PAPER_PROMPT, GenerationSettings(max_new_tokens=64)):
        pass
    handlers.run_evaluation(store, session, ["original", "pruned", "pruned + LoRA"], ["wikitext2"],
                            ["piqa", "arc_easy"], 32, 50)
    handlers.export(store, session, "pruned + LoRA")
    handlers.export_gguf(store, session, "pruned", "f16")

    steps = {}
    for r in rows:
        ratio = r["measured"] / r["estimate"] if r["estimate"] else float("inf")
        print(f"{r['step']:>28}: estimate {r['estimate'] / 2**20:8.0f} MiB  measured {r['measured'] / 2**20:8.0f} MiB"
              f"  ratio {ratio:.2f}")
        steps.setdefault(r["step"], []).append(round(ratio, 3))
    print(json.dumps({"steps": steps, "max_ratio": round(max(max(v) for v in steps.values()), 3)}))


if __name__ == "__main__":
    main()
