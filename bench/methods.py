"""The field side by side: every named recipe (this project's default, LLM-Pruner, FLAP, Wanda-sp,
Minitron, ShortGPT) on the default model at each share of parameters, untuned and (with
--recover) after the quick LoRA preset, over several calibration draws (mean and spread).

Calibration: `--calib-samples` x `--calib-len` tokens of `--calib-data` (the built-in text by default),
one seed per draw
(nothing calibrates or trains on an evaluation set; the quick preset trains on book passages).
Perplexity: WikiText-2 test, the first `--windows` windows of 128 tokens, next to the dense model's
on the same windows.

    python bench/methods.py --data-dir ../shared/data                        # the issue's full grid
    python bench/methods.py --data-dir ../shared/data --draws 1 --windows 64  # a quick look
    python bench/methods.py --render --out bench/results/methods_quick_grid.json # table + figure again
    python bench/methods.py --combine bench/results/methods_quick_20.json,bench/results/methods_quick_50.json \
        --out bench/results/methods_quick_grid.json      # one grid from runs of the same settings

Writes bench/results/methods.json (every run, as it goes), methods.md (the table) and
methods.plotly.json (perplexity / dense against share removed, one line per method, dotted after
the quick LoRA with --recover); the last
stdout line is one JSON object {method: {amount: mean ratio untuned}}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import asdict, replace
from pathlib import Path

import common
from pruner import PruneConfig, ScoreConfig, calibration_ids, load_model, prune_model
from pruner.data import CONTINUATION_TOKENS
from pruner.evaluate import perplexity
from pruner.recipes import RECIPE_NOTES, RECIPES, recipe
from pruner.recover import LoraRecovery, preset, recovery_examples

RESULTS = Path(__file__).resolve().parent / "results"

# combinations measured beside the named recipes, candidates for a better default (#19)
CANDIDATES = {
    "taylor-last+standardized": (ScoreConfig(criterion="taylor-element1", aggregation="last"),
                                 PruneConfig(attn_granularity="query-heads",
                                             allocation="standardized", compensate=True)),
    "fluctuation-mlp+compensation": (ScoreConfig(criterion="fluctuation", aggregation="last"),
                                     PruneConfig(attn_share=0.0, compensate=True)),
    # past the MLPs' room (50%): the default with Minitron's hidden share, Minitron with the refit
    "default+hidden-share": (RECIPES["default"][0], replace(RECIPES["default"][1], hidden_share=0.5)),
    "minitron+refit": (RECIPES["minitron"][0], replace(RECIPES["minitron"][1], compensate=True, refit=True)),
}


def recipe_of(name: str, amount: float):
    if name in CANDIDATES:
        score_config, prune_config = CANDIDATES[name]
        return score_config, replace(prune_config, amount=amount, unit="parameters")
    return recipe(name, prune_overrides={"amount": amount, "unit": "parameters"})


def evaluate(model, tok, windows: int, data_dir) -> float:
    return perplexity(model, tok, "wikitext2", 128, max_windows=windows, data_dir_path=data_dir,
                      progress=False)["ppl"]


_DRAWS: dict[int, object] = {}    # seed -> its calibration windows, shared by every method of one run


def draw(model, tok, seed: int, args):
    """The calibration windows of draw `seed` (the dense model's continuations written once a run)."""
    if seed not in _DRAWS:
        _DRAWS[seed] = calibration_ids(tok, args.calib_data, args.calib_samples, args.calib_len, seed=seed,
                                       data_dir_path=args.data_dir, model=model, continuation=args.calib_continue)
    return _DRAWS[seed].clone()                      # (n, L): no method sees another's changes


def one_run(model, tok, name: str, amount: float, seed: int, args, dense: float) -> dict:
    score_config, prune_config = recipe_of(name, amount)
    prune_config, notes = prune_config.normalized(model)
    ids = draw(model, tok, seed, args)
    row = {"method": name, "amount": amount, "seed": seed, "notes": notes}
    start = time.perf_counter()
    try:
        result = prune_model(model, ids, score_config, prune_config)
    except ValueError as err:               # the recipe cannot reach this share on this model
        return {**row, "error": str(err)}
    row["prune_s"] = time.perf_counter() - start
    row["removed"] = result.report["ratio_params_removed"]
    row["ppl"] = evaluate(result.model, tok, args.windows, args.data_dir)
    row["ratio"] = row["ppl"] / dense
    if args.recover:
        settings = preset("quick")
        examples = recovery_examples("lambada", tok, settings.seq_len, None, args.data_dir)
        start = time.perf_counter()
        rec = LoraRecovery(result.model, tok, examples, settings, teacher=model, in_place=True)
        for _ in rec.train():
            pass
        merged = rec.merge(in_place=True)
        row["recover_s"] = time.perf_counter() - start
        row["ppl_quick"] = evaluate(merged, tok, args.windows, args.data_dir)
        row["ratio_quick"] = row["ppl_quick"] / dense
    return row


def summarize(runs: list[dict], key: str) -> dict:
    """(method, amount) -> {"mean", "min", "max", "n"} of `key` over the draws that reached it."""
    out = {}
    for r in runs:
        if key in r:
            out.setdefault((r["method"], r["amount"]), []).append(r[key])
    return {k: {"mean": statistics.mean(v), "min": min(v), "max": max(v), "n": len(v)} for k, v in out.items()}


def quick_text(settings: dict | None) -> str:
    """The quick preset a run file recovered with, in words (files before 2026-12-03 did not record it)."""
    if not settings:
        return "the quick preset of the round it ran (not recorded in the file; README)"
    s = settings
    return (f"LoRA rank {s['r']}, {s['max_steps']} steps of {s['batch_size']} x {s['seq_len']} book-passage "
            f"tokens, lr {s['learning_rate']:g}, next-token loss x {s['ce_weight']:g} + KL x {s['distill_weight']:g}"
            + (", bfloat16 where native" if s.get("mixed_precision") else ""))


def setting(args, name: str):
    """A run's setting, or what files written before that option ran with (OLD_DEFAULTS)."""
    return getattr(args, name, OLD_DEFAULTS[name])


def continuation_text(args) -> str:
    """How the runs' calibration windows were continued, in words (self text never is)."""
    if setting(args, "calib_data") == "self":
        return ""
    if setting(args, "calib_continue"):
        return f", each continued by {args.calib_continue} tokens the model sampled"
    return ", the text alone (not continued by the model)"


def table(runs: list[dict], methods: list[str], amounts: list[float], args, dense: float,
          quick_settings: dict | None = None) -> str:
    untuned, quick = summarize(runs, "ratio"), summarize(runs, "ratio_quick")
    errors = {(r["method"], r["amount"]): r["error"] for r in runs if "error" in r}

    def cell(stats, key):
        if key in stats:
            s = stats[key]
            return f"{s['mean']:.2f}x ({s['min']:.2f}-{s['max']:.2f})" if s["n"] > 1 else f"{s['mean']:.2f}x"
        return "cannot reach" if key in errors else "not run"

    head = "| method | " + " | ".join(f"{100 * a:.0f}% untuned" + (f" | {100 * a:.0f}% quick LoRA" if args.recover else "")
                                      for a in amounts) + " |"
    rows = [head, "|" + "---|" * (1 + len(amounts) * (2 if args.recover else 1))]
    for m in methods:
        cells = []
        for a in amounts:
            cells.append(cell(untuned, (m, a)))
            if args.recover:
                cells.append(cell(quick, (m, a)))
        rows.append(f"| `{m}` | " + " | ".join(cells) + " |")
    return (f"WikiText-2 perplexity / dense ({dense:.2f}), first {args.windows} windows of 128 tokens; "
            f"{args.draws} calibration draw(s) of {args.calib_samples} x {args.calib_len} tokens of "
            f"{setting(args, 'calib_data')}{continuation_text(args)} (mean, range)"
            + (f"; quick LoRA: {quick_text(quick_settings)}" if args.recover else "")
            + "\n\n" + "\n".join(rows) + "\n")


def figure(runs: list[dict], methods: list[str], dense: float, quick_settings: dict | None = None) -> dict:
    """Plotly JSON: perplexity / dense against the share of parameters removed, one line per method."""
    import plotly
    import plotly.graph_objects as go

    fig = go.Figure()
    untuned, quick = summarize(runs, "ratio"), summarize(runs, "ratio_quick")
    colors = plotly.colors.qualitative.Plotly
    for i, m in enumerate(methods):
        for stats, label, dash in ((untuned, "", "solid"), (quick, " + quick LoRA", "dot")):
            points = sorted((a, s["mean"]) for (mm, a), s in stats.items() if mm == m)
            if points:
                fig.add_scatter(x=[0.0] + [a for a, _ in points], y=[1.0] + [v for _, v in points],
                                mode="lines+markers", name=m + label,
                                line={"color": colors[i % len(colors)], "dash": dash})
    title = (f"untuned (solid) and after the quick LoRA (dotted: rank {quick_settings['r']}, "
             f"{quick_settings['max_steps']} steps)" if quick_settings else
             "untuned (solid) and after the quick LoRA preset (dotted)") if quick else "untuned"
    fig.update_layout(xaxis_title="share of parameters removed", yaxis_title="WikiText-2 perplexity / dense",
                      yaxis_type="log", title=f"The field side by side, {title} (bench/methods.py)")
    return json.loads(fig.to_json())


def render(out: Path) -> None:
    """The table (.md) and figure (.plotly.json) of the runs in `out`, with the settings they ran with."""
    data = json.loads(out.read_text())
    args = argparse.Namespace(**{**OLD_DEFAULTS, **data["args"]})
    runs = data["runs"]
    methods = list(dict.fromkeys(r["method"] for r in runs))
    amounts = sorted({r["amount"] for r in runs})
    text = table(runs, methods, amounts, args, data["dense_ppl"], data.get("quick"))
    out.with_suffix(".md").write_text(text)
    drawn = figure(runs, methods, data["dense_ppl"], data.get("quick"))
    out.with_name(out.stem + ".plotly.json").write_text(json.dumps(drawn) + "\n")
    print(text)


SAME_SETTINGS = ("draws", "first_seed", "calib_samples", "calib_len", "calib_data", "calib_continue", "windows",
                 "recover")
# files written before these options (no continued calibration before 2026-12-05, late evening)
OLD_DEFAULTS = {"calib_data": "builtin", "first_seed": 0, "calib_continue": 0}


def settings_of(data: dict) -> dict:
    return {k: data["args"].get(k, OLD_DEFAULTS.get(k)) for k in SAME_SETTINGS}


def combine(paths: list[Path], out: Path) -> None:
    """One runs file (then its table and figure) from run files measured with the same settings,
    dense perplexity and quick preset, e.g. each share of parameters run on its own; refuses
    files that differ in any of them, or that repeat a (method, share, seed)."""
    if any(Path(p).resolve() == Path(out).resolve() for p in paths):
        raise SystemExit("--combine: --out must be a new file, not one of the files combined")
    files = [json.loads(Path(p).read_text()) for p in paths]
    first = files[0]
    for path, data in zip(paths[1:], files[1:]):
        for what, a, b in (("settings", settings_of(first), settings_of(data)),
                           ("dense perplexity", first["dense_ppl"], data["dense_ppl"]),
                           ("quick preset", first.get("quick"), data.get("quick"))):
            if a != b:
                raise SystemExit(f"--combine: {path} differs from {paths[0]} in its {what}: {b} vs {a}")
    runs = [r for data in files for r in data["runs"]]
    keys = [(r["method"], r["amount"], r["seed"]) for r in runs]
    if len(set(keys)) != len(keys):
        raise SystemExit("--combine: the files repeat a run (method, share, seed)")
    amounts = sorted({r["amount"] for r in runs})
    args = {**first["args"], "amounts": ",".join(f"{a:g}" for a in amounts), "out": str(out)}
    kept = {k: v for k, v in first.items() if k != "machine"}      # each file's machine is listed below
    out.write_text(json.dumps({**kept, "args": args, "combined_from": [str(p) for p in paths],
                               "machines": [data.get("machine") for data in files], "runs": runs},
                              indent=2) + "\n")
    render(out)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=",".join([*RECIPES, *CANDIDATES]))
    parser.add_argument("--amounts", default="0.2,0.5")
    parser.add_argument("--draws", type=int, default=3, help="calibration seeds first..first+N-1")
    parser.add_argument("--first-seed", type=int, default=0, help="the first calibration seed")
    parser.add_argument("--calib-samples", type=int, default=32)
    parser.add_argument("--calib-len", type=int, default=128)
    parser.add_argument("--calib-data", default="builtin",
                        help="builtin (the field's table), self (the default recipe's own), lambada (book passages), ...")
    parser.add_argument("--calib-continue", type=int, default=CONTINUATION_TOKENS,
                        help="tokens the model appends to each window of given text (pruner.data.continued_ids; "
                             "0: the text alone, as every run before 2026-12-05 late evening)")
    parser.add_argument("--windows", type=int, default=256)
    parser.add_argument("--recover", action="store_true", help="also the quick LoRA preset after each prune")
    parser.add_argument("--data-dir", default=str(common.SHARED_DATA) if common.SHARED_DATA.is_dir() else None)
    parser.add_argument("--out", default=str(RESULTS / "methods.json"))
    parser.add_argument("--merge", action="store_true",
                        help="keep the other methods' runs in --out (same settings) and re-run only --methods")
    parser.add_argument("--render", action="store_true",
                        help="only write the table and figure of the runs already in --out (no model is run)")
    parser.add_argument("--combine", default=None,
                        help="comma-separated run files of the same settings: write them as one into --out "
                             "(no model is run)")
    args = parser.parse_args()
    if args.combine:
        return combine([Path(p) for p in args.combine.split(",")], Path(args.out))
    if args.render:
        return render(Path(args.out))
    methods, amounts = args.methods.split(","), [float(a) for a in args.amounts.split(",")]
    model, tok = load_model("default", device="cpu")[:2]
    dense = evaluate(model, tok, args.windows, args.data_dir)
    print(f"dense: {dense:.2f}", flush=True)
    runs, out = [], Path(args.out)
    every, machine = methods, common.machine()
    if args.merge and out.is_file():
        old = json.loads(out.read_text())
        machine = old.get("machine", machine)              # the file's machine is its first runs'; merged runs say theirs
        same = settings_of(old)
        if same != {k: vars(args)[k] for k in same}:
            raise SystemExit(f"--merge needs the same settings as {out}: {same}")
        runs = [r for r in old["runs"] if r["method"] not in methods]
        every = list(dict.fromkeys([r["method"] for r in runs] + methods))
        amounts = sorted(set(amounts) | {r["amount"] for r in runs})
    for amount in amounts:
        for name in methods:
            for seed in range(args.first_seed, args.first_seed + args.draws):
                row = one_run(model, tok, name, amount, seed, args, dense)
                if args.merge:
                    row["machine"] = common.machine()
                runs.append(row)
                print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
                out.write_text(json.dumps({"dense_ppl": dense, "args": vars(args), "machine": machine,
                                           "quick": asdict(preset("quick")) if args.recover else None,
                                           "notes": RECIPE_NOTES, "runs": runs}, indent=2) + "\n")
    render(out)                                          # the table and figure of every run in --out
    print(json.dumps({m: {str(a): round(s["mean"], 3) for (mm, a), s in summarize(runs, "ratio").items() if mm == m}
                      for m in every}))


if __name__ == "__main__":
    main()
