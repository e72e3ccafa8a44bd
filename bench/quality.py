"""Pruning quality on the default model at 20% of total parameters removed: one row per lever.

Each row prunes the dense model with one recipe (10 x 64 built-in calibration tokens unless the
row says otherwise), no tuning, and measures WikiText-2 perplexity on the first --windows
windows of 128 tokens, next to the dense model on the same windows. The best untuned row then
gets the quick LoRA (self-generated data + distillation) for the "with LoRA" figure.

    python bench/quality.py --data-dir ../shared/data          # ~30 min on 2 CPU cores
Writes bench/results/quality.md/.json; last line JSON {"ratio_no_tune": ..., "ratio_lora": ...}.
"""

import argparse
import json
import time
from pathlib import Path

import common
from pruner import PruneConfig, ScoreConfig, calibration_ids, load_model, prune_model
from pruner.evaluate import perplexity
from pruner.recipes import recipe
from pruner.recover import LoraRecovery, preset, self_generated_examples

E1 = "taylor-element1"
# the self-generated text's sampling until late on 2026-12-05 (pruner.data.SELF_SAMPLING since: plain)
TRUNCATED = {"temperature": 1.0, "top_p": 0.95, "top_k": 50}

ROWS = [
    # name, score kwargs, prune kwargs, calibration (source, samples, seq_len[, self-sampling settings])
    ("llm-pruner: KV groups + MLP, local, element1", dict(criterion=E1), dict(), None),
    ("llm-pruner + bias compensation", dict(criterion=E1), dict(compensate=True), None),
    ("query heads + MLP (same ratio)", dict(criterion=E1), dict(attn_granularity="query-heads"), None),
    ("MLP only, element1", dict(criterion=E1), dict(attn_share=0.0), None),
    ("MLP only, element2 (fp32 Fisher)", dict(criterion="taylor-element2"), dict(attn_share=0.0), None),
    ("MLP only, vector", dict(criterion="taylor-vector"), dict(attn_share=0.0), None),
    ("MLP only, element1, last-only", dict(criterion=E1, aggregation="last"), dict(attn_share=0.0), None),
    ("MLP only, global (one ranking)", dict(criterion=E1), dict(attn_share=0.0, scope="global"), None),
    ("MLP only + compensation", dict(criterion=E1), dict(attn_share=0.0, compensate=True), None),
    ("MLP only, fluctuation (FLAP) + compensation", dict(criterion="fluctuation"),
     dict(attn_share=0.0, compensate=True), None),
    ("MLP only + compensation, all layers", dict(criterion=E1),
     dict(attn_share=0.0, compensate=True, attn_layers=(0, 30), mlp_layers=(0, 30)), None),
    ("query heads 10% + MLP + compensation", dict(criterion=E1),
     dict(attn_share=0.1, attn_granularity="query-heads", compensate=True), None),
    ("MLP only + compensation, 3 iterative steps", dict(criterion=E1),
     dict(attn_share=0.0, compensate=True, iterative_steps=3), None),
    ("MLP only + compensation, 128 x 128 LAMBADA calibration", dict(criterion=E1),
     dict(attn_share=0.0, compensate=True), ("lambada", 128, 128)),
    ("MLP only, element1 last-only + compensation", dict(criterion=E1, aggregation="last"),
     dict(attn_share=0.0, compensate=True), None),
    ("MLP only, element1 last-only + compensation, 128 x 128 LAMBADA", dict(criterion=E1, aggregation="last"),
     dict(attn_share=0.0, compensate=True), ("lambada", 128, 128)),
    ("query heads 10% + MLP, last-only + compensation", dict(criterion=E1, aggregation="last"),
     dict(attn_share=0.1, attn_granularity="query-heads", compensate=True), None),
    ("MLP only, last-only + compensation, 3 iterative steps", dict(criterion=E1, aggregation="last"),
     dict(attn_share=0.0, compensate=True, iterative_steps=3), None),
    ("MLP only, last-only + compensation, per-layer ratios from measured sensitivity",
     dict(criterion=E1, aggregation="last"), dict(attn_share=0.0, compensate=True, allocation="sensitivity"), None),
    ("MLP only, last-only + compensation, sensitivity allocation, 128 x 128 LAMBADA",
     dict(criterion=E1, aggregation="last"), dict(attn_share=0.0, compensate=True, allocation="sensitivity"),
     ("lambada", 128, 128)),
    ("MLP only, param_mix (LLM-Pruner's name for element2), last-only + compensation",
     dict(criterion="taylor-mix", aggregation="last"), dict(attn_share=0.0, compensate=True), None),
    ("MLP only, last-only + compensation, means recomputed layer by layer",
     dict(criterion=E1, aggregation="last"), dict(attn_share=0.0, compensate=True, recompute_means=True), None),
    ("MLP only, last-only + least-squares refit of each pruned down_proj",
     dict(criterion=E1, aggregation="last"), dict(attn_share=0.0, compensate=True, refit=True), None),
    ("last-only + refit, 32 x 128 self-generated calibration (the default until 2026-12-05)",
     dict(criterion=E1, aggregation="last"), dict(attn_share=0.0, compensate=True, refit=True), ("self", 32, 128, TRUNCATED)),
    ("row 23 with per-layer ratios falling with depth (1.5x to 0.5x the ratio; the default on 2026-12-05)",
     dict(criterion=E1, aggregation="last"),
     dict(attn_share=0.0, compensate=True, refit=True, allocation="depth", layer_spread=0.5, score_shape=0.0),
     ("self", 32, 128, TRUNCATED)),
    ("row 24 with each layer's ratio also shaped by its median score (the default on 2026-12-05 afternoon)",
     dict(criterion=E1, aggregation="last"),
     dict(attn_share=0.0, compensate=True, refit=True, allocation="depth", layer_spread=0.5, score_shape=1.0),
     ("self", 32, 128, TRUNCATED)),
    ("row 25 ranked by squared first-order Taylor (taylor-squared, Molchanov et al. 2019; the default on 2026-12-05 evening)",
     dict(criterion="taylor-squared", aggregation="last"),
     dict(attn_share=0.0, compensate=True, refit=True, allocation="depth", layer_spread=0.5, score_shape=1.0),
     ("self", 32, 128, TRUNCATED)),
    ("the default recipe: row 26 calibrated on text sampled plainly (no top-p / top-k cut)",
     dict(criterion="taylor-squared", aggregation="last"),
     dict(attn_share=0.0, compensate=True, refit=True, allocation="depth", layer_spread=0.5, score_shape=1.0),
     ("self", 32, 128)),
]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--windows", type=int, default=256)
    parser.add_argument("--target", type=float, default=0.2)
    parser.add_argument("--rows", default="", help="comma list of row numbers (default: all)")
    parser.add_argument("--no-lora", action="store_true")
    parser.add_argument("--data-dir", default=str(common.SHARED_DATA))
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "quality"))
    parser.add_argument("--draws", default="",
                        help="instead of the rows: the default recipe over calibration draws, e.g. "
                             "'builtin,lambada:0,1,2:10x64' (sources : seeds : samples x tokens); "
                             "several specs separated by ';'")
    args = parser.parse_args()
    model, tok = load_model("default")
    if args.draws:
        return calibration_draws(model, tok, args)

    def ppl(m):
        return perplexity(m, tok, "wikitext2", max_windows=args.windows, data_dir_path=args.data_dir,
                          progress=False)["ppl"]

    dense = ppl(model)
    print(f"dense WikiText-2 ppl ({args.windows} windows): {dense:.2f}", flush=True)
    chosen = [int(x) for x in args.rows.split(",") if x] or list(range(len(ROWS)))
    results, pruned_models = [], {}
    for i in chosen:
        name, skw, pkw, calib = ROWS[i]
        source, n, length, *sampling = calib or ("builtin", 10, 64)
        with common.self_sampling(*sampling):
            ids = calibration_ids(tok, source, n, length, seed=0, data_dir_path=args.data_dir, model=model)
        start = time.perf_counter()
        res = prune_model(model, ids, ScoreConfig(**skw), PruneConfig(amount=args.target, **pkw))
        seconds = time.perf_counter() - start
        value = ppl(res.model)
        results.append({"row": i, "recipe": name, "ppl": value, "ratio": value / dense,
                        "removed": res.report["ratio_params_removed"], "prune_s": seconds})
        pruned_models[i] = res.model
        print(f"[{i}] {name}: ppl {value:.2f} ({value / dense:.2f}x dense), "
              f"{100 * res.report['ratio_params_removed']:.1f}% removed, {seconds:.0f}s", flush=True)
        for j in list(pruned_models):       # keep only the best model in memory
            if j != min(results, key=lambda r: r["ppl"])["row"]:
                del pruned_models[j]
    best = min(results, key=lambda r: r["ppl"])
    lora = None
    if not args.no_lora:
        examples = self_generated_examples(model, tok, seed=0)
        rec = LoraRecovery(pruned_models[best["row"]], tok, examples, preset("quick"), teacher=model)
        for _ in rec.train():
            pass
        lora = ppl(rec.merge())
        print(f"best row [{best['row']}] + quick LoRA: ppl {lora:.2f} ({lora / dense:.2f}x dense)")

    lines = ["| # | recipe (20% of parameters removed) | WikiText-2 ppl | x dense |", "|---|---|---|---|",
             f"| - | dense | {dense:.2f} | 1.00 |"]
    lines += [f"| {r['row']} | {r['recipe']} | {r['ppl']:.2f} | {r['ratio']:.2f} |" for r in results]
    if lora is not None:
        lines.append(f"| {best['row']}+LoRA | {best['recipe']} + quick LoRA | {lora:.2f} | {lora / dense:.2f} |")
    table = "\n".join(lines)
    print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(table + f"\n\nFirst {args.windows} windows x 128 tokens of WikiText-2 "
                                      "test; calibration 10 x 64 built-in tokens unless stated.\n")
    summary = {"ratio_no_tune": best["ratio"], "ratio_lora": (lora / dense) if lora else None,
               "dense_ppl": dense, "best_row": best["recipe"], "machine": common.machine(), "rows": results}
    out.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({"ratio_no_tune": round(best["ratio"], 3),
                      "ratio_lora": round(lora / dense, 3) if lora else None}))


def calibration_draws(model, tok, args):
    """The default recipe's untuned perplexity over calibration draws: mean, spread, each draw."""
    import statistics

    def ppl(m):
        return perplexity(m, tok, "wikitext2", max_windows=args.windows, data_dir_path=args.data_dir,
                          progress=False)["ppl"]

    dense = ppl(model)
    print(f"dense WikiText-2 ppl ({args.windows} windows): {dense:.2f}", flush=True)
    score_config, prune_config = recipe("default")
    summaries = []
    for spec in args.draws.split(";"):
        sources, seeds, size = spec.split(":")
        n, length = (int(x) for x in size.split("x"))
        ratios = []
        for source in sources.split(","):
            for seed in (int(x) for x in seeds.split(",")):
                ids = calibration_ids(tok, source, n, length, seed=seed, data_dir_path=args.data_dir)
                value = ppl(prune_model(model, ids, score_config, prune_config).model)
                ratios.append(value / dense)
                print(f"  {source} seed {seed} {n}x{length}: ppl {value:.2f} ({value / dense:.3f}x dense)", flush=True)
        summary = {"draws": spec, "n": len(ratios), "mean": statistics.mean(ratios),
                   "stdev": statistics.stdev(ratios) if len(ratios) > 1 else 0.0,
                   "min": min(ratios), "max": max(ratios), "ratios": ratios}
        summaries.append(summary)
        print(f"{spec}: mean {summary['mean']:.3f}x dense, stdev {summary['stdev']:.3f}, "
              f"range {summary['min']:.3f}-{summary['max']:.3f} over {len(ratios)} draws", flush=True)
    out = Path(args.out).with_name("calibration_draws.json")
    out.write_text(json.dumps({"dense_ppl": dense, "windows": args.windows, "machine": common.machine(),
                               "draws": summaries}, indent=2) + "\n")
    print(json.dumps({"draws": [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in d.items()
                                 if k != "ratios"} for d in summaries]}))


if __name__ == "__main__":
    main()
