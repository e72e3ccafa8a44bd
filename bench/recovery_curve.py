"""WikiText-2 perplexity of the pruned default model against LoRA recovery time, per data / objective.

The default recipe prunes 20% of the default model's parameters (10 x 64 built-in calibration
tokens); each configuration then trains LoRA on a copy and is measured on the first --windows
WikiText-2 windows at checkpoints of training time. The x axis is wall-clock seconds of this CPU
including data preparation (the dense model writing its answers for "self"); evaluation pauses the
clock. Then the two presets run exactly as the CLI and the dashboard run them: `quick` (its 48
steps) and `thorough` (its 760 steps; 600 until 2026-12-04), each measured at its end.

    python bench/recovery_curve.py --data-dir ../shared/data       # ~75 min on 2 CPU cores
Writes bench/results/recovery_curve.{json,md,html} (and .plotly.json for the Recover tab);
last line JSON {"quick_ratio": ..., "thorough_ratio": ...} (perplexity / dense).
"""

import argparse
import json
import time
from dataclasses import asdict, replace
from pathlib import Path

import common
from pruner import calibration_ids, load_model, prune_model
from pruner.evaluate import perplexity
from pruner.recipes import recipe
from pruner.recover import EXAMPLE_POOL, PRESET_DATA, LoraRecovery, example_limit, preset, recovery_examples

# the settings the first five curves were measured with (the quick preset before it became KL-led:
# r 8, lr 1.5e-3, the next-token loss whole), on the quick preset's batches of 4 x 128 tokens
FORMER_QUICK = dict(r=8, alpha=16, learning_rate=1.5e-3, ce_weight=1.0)
# name, data source, settings overrides on the quick preset's (each curve pins what its label names,
# so a later change of the preset does not relabel it)
CONFIGS = [
    ("self answers + KL", "self", dict(FORMER_QUICK, distill_weight=1.0)),
    ("self answers, CE only", "self", dict(FORMER_QUICK, distill_weight=0.0)),
    ("book text + KL", "lambada", dict(FORMER_QUICK, distill_weight=1.0)),
    ("book text, CE only", "lambada", dict(FORMER_QUICK, distill_weight=0.0)),
    ("built-in text + KL", "builtin", dict(FORMER_QUICK, distill_weight=1.0)),
    ("book text, KL-led (CE x 0.05), r 32, lr 3e-3", "lambada",
     dict(r=32, alpha=64, learning_rate=3e-3, ce_weight=0.05, distill_weight=1.0)),
]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--windows", type=int, default=256)
    parser.add_argument("--budget", type=float, default=300.0, help="training seconds per configuration")
    parser.add_argument("--checkpoints", default="60,150,300")
    parser.add_argument("--configs", default="", help="comma list of config numbers (default: all; 'none')")
    parser.add_argument("--append", action="store_true",
                        help="keep the rows already in --out and replace only the ones run now")
    parser.add_argument("--presets", default="quick,thorough")
    parser.add_argument("--data-dir", default=str(common.SHARED_DATA))
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "recovery_curve"))
    args = parser.parse_args()

    dense, tok = load_model("default")
    ppl = lambda m: perplexity(m, tok, "wikitext2", max_windows=args.windows,          # noqa: E731
                               data_dir_path=args.data_dir, progress=False)["ppl"]
    dense_ppl = ppl(dense)
    score_config, config = recipe("default")
    config, _ = config.normalized(dense)
    pruned = prune_model(dense, calibration_ids(tok, "builtin", 10, 64, 0), score_config, config).model
    pruned_ppl = ppl(pruned)
    print(f"dense {dense_ppl:.2f}, pruned {pruned_ppl:.2f} ({pruned_ppl / dense_ppl:.2f}x)", flush=True)
    rows = [{"config": "pruned, no recovery", "data": "", "seconds": 0.0, "steps": 0, "tokens": 0,
             "ppl": pruned_ppl, "ratio": pruned_ppl / dense_ppl}]
    earlier = Path(args.out).with_suffix(".json")
    if args.append and earlier.is_file():
        rows += [r for r in json.loads(earlier.read_text())["rows"] if r["config"] != rows[0]["config"]]
    checkpoints = [float(x) for x in args.checkpoints.split(",")]
    chosen = [] if args.configs == "none" else \
        [CONFIGS[int(i)] for i in args.configs.split(",")] if args.configs else CONFIGS
    cache = {}
    for name, source, overrides in chosen:
        rows = [r for r in rows if r["config"] != name]
        settings = preset("quick", **overrides)
        rows += curve(name, source, settings, pruned, dense, tok, args, checkpoints, ppl, dense_ppl, cache)
        save(rows, dense_ppl, args.out)
    results = {}
    for name in [p for p in args.presets.split(",") if p]:
        settings = preset(name)
        rows = [r for r in rows if r["config"] != f"preset {name}"]
        row = curve(f"preset {name}", PRESET_DATA[name], settings, pruned, dense, tok, args, [], ppl,
                    dense_ppl, cache, to_end=True)[-1]
        row["settings"] = asdict(settings)
        rows.append(row)
        results[f"{name}_ratio"] = round(row["ratio"], 3)
        results[f"{name}_seconds"] = round(row["seconds"], 1)
        save(rows, dense_ppl, args.out)
    print(json.dumps({"dense_ppl": round(dense_ppl, 2), "pruned_ratio": round(pruned_ppl / dense_ppl, 3),
                      **results}))


def curve(name, source, settings, pruned, dense, tok, args, checkpoints, ppl, dense_ppl, cache,
          to_end=False):
    """Train on a copy of `pruned`; measure at each checkpoint (or once, after max_steps)."""
    start = time.perf_counter()
    limit = example_limit(settings) if to_end else EXAMPLE_POOL     # a preset reads what the CLI reads
    if (source, limit) not in cache:     # the dashboard also prepares each source once per server
        cache[source, limit] = (recovery_examples(source, tok, settings.seq_len, dense, args.data_dir, limit),
                                time.perf_counter() - start)
    examples, prep = cache[source, limit]
    teacher = dense if settings.distill_weight > 0 else None
    rec = LoraRecovery(pruned, tok, examples, settings, teacher)
    if not to_end:                        # schedule over the budget: steps from the first steps' pace
        t0 = time.perf_counter()
        for _ in range(2):
            rec.train_step()
        rec.settings = replace(settings, max_steps=max(3, int(args.budget / ((time.perf_counter() - t0) / 2))))
        trained = time.perf_counter() - t0
    else:
        trained = 0.0
    rows, pending = [], list(checkpoints)
    while rec.step < rec.settings.max_steps:
        t0 = time.perf_counter()
        figures = rec.train_step()
        trained += time.perf_counter() - t0
        last = rec.step == rec.settings.max_steps
        if (pending and trained >= pending[0]) or last:
            while pending and trained >= pending[0]:
                pending.pop(0)
            if to_end and not last:
                continue
            rec.model.eval()
            value = ppl(rec.model)
            rows.append({"config": name, "data": source, "seconds": round(prep + trained, 1),
                         "prep_seconds": round(prep, 1), "steps": rec.step,
                         "tokens": rec.step * settings.batch_size * settings.seq_len,
                         "ppl": value, "ratio": value / dense_ppl, "loss": figures["loss"]})
            print(f"{name}: {prep + trained:6.0f}s  step {rec.step:4d}  ppl {value:7.2f} "
                  f"({value / dense_ppl:.2f}x)", flush=True)
    return rows


def save(rows, dense_ppl, out):
    import pandas as pd

    from components.figures import recovery_curve_figure

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame(rows)
    summary = {"dense_ppl": dense_ppl, "machine": common.machine(), "rows": rows}
    out.with_suffix(".json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    lines = ["| configuration | data | seconds | steps | tokens | ppl | x dense |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['config']} | {r['data']} | {r['seconds']:.0f} | {r['steps']} | {r['tokens']:,} | "
              f"{r['ppl']:.2f} | {r['ratio']:.2f} |" for r in rows]
    out.with_suffix(".md").write_text("\n".join(lines) + f"\n\nDense: {dense_ppl:.2f}\n")
    figure = recovery_curve_figure(table, dense_ppl)
    figure.write_html(str(out.with_suffix(".html")), include_plotlyjs="cdn")
    out.with_suffix(".plotly.json").write_text(figure.to_json())


if __name__ == "__main__":
    main()
