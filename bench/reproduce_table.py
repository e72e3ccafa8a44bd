"""The paper's Table 1 for the default model at 20% of parameters removed, in one command.

Rows: dense, then LLM-Pruner's block strategy (KV groups + MLP channels, layers 3..27, local
ratio solved for 20% of all parameters, 10 x 64 built-in calibration tokens) with the criteria
L2, random, vector, element1, element2 -- each without tuning and after the quick LoRA
(self-generated data from the dense model + distillation). Columns: WikiText-2 and PTB
perplexity (first --ppl-windows windows of 128 tokens), the zero-shot tasks available offline
(first --limit items each; acc_norm where lm-eval reports it), their average, parameters.

    python bench/reproduce_table.py --data-dir ../shared/data            # ~40 min on 2 CPU cores
Writes bench/results/table1.md and .json; last stdout line is the JSON.
"""

import argparse
import json
import time
from pathlib import Path

import common
from pruner import PruneConfig, ScoreConfig, calibration_ids, load_model, prune_model
from pruner.evaluate import evaluate
from pruner.recover import LoraRecovery, preset, self_generated_examples
from pruner.stats import count_params

CRITERIA = [("L2", "l2"), ("Random", "random"), ("Vector", "taylor-vector"),
            ("Element1", "taylor-element1"), ("Element2", "taylor-element2")]
TASKS = ["boolq", "piqa", "winogrande", "arc_easy", "arc_challenge", "openbookqa"]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", type=float, default=0.2)
    parser.add_argument("--ppl-windows", type=int, default=64)
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--lora-steps", type=int, default=None, help="default: the quick preset's")
    parser.add_argument("--rows", default=",".join(n for n, _ in CRITERIA))
    parser.add_argument("--no-lora", action="store_true", help="untuned rows only (quick look)")
    parser.add_argument("--data-dir", default=str(common.SHARED_DATA))
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "table1"))
    args = parser.parse_args()

    model, tok = load_model("default")
    ids = calibration_ids(tok, "builtin", 10, 64, seed=0)

    def measure(m):
        r = evaluate(m, tok, ["wikitext2", "ptb"], TASKS, max_windows=args.ppl_windows,
                     limit=args.limit, data_dir_path=args.data_dir, progress=False)
        return {"wikitext2": r["ppl"]["wikitext2"], "ptb": r["ppl"]["ptb"], **r["acc"],
                "average": r["acc_mean"], "params": count_params(m)["params"]}

    rows = [{"method": "Dense", "tuned": "-", **measure(model)}]
    print(rows[-1], flush=True)
    start = time.perf_counter()
    examples = [] if args.no_lora else self_generated_examples(model, tok, seed=0)
    wanted = set(args.rows.split(","))
    for label, criterion in CRITERIA:
        if label not in wanted:
            continue
        t0 = time.perf_counter()
        result = prune_model(model, ids, ScoreConfig(criterion, "sum"),
                             PruneConfig(amount=args.target, strategy="block", scope="local"))
        rows.append({"method": label, "tuned": "no", **measure(result.model)})
        print(rows[-1], flush=True)
        if args.no_lora:
            continue
        settings = preset("quick", **({"max_steps": args.lora_steps} if args.lora_steps else {}))
        rec = LoraRecovery(result.model, tok, examples, settings, teacher=model)
        for _ in rec.train():
            pass
        rows.append({"method": label, "tuned": "LoRA", **measure(rec.merge()),
                     "seconds": time.perf_counter() - t0})
        print(rows[-1], flush=True)

    columns = ["wikitext2", "ptb"] + TASKS + ["average"]
    lines = ["| Method | LoRA | Params | WikiText-2 ↓ | PTB ↓ | BoolQ | PIQA | WinoGrande | ARC-e | "
             "ARC-c | OBQA | Average |", "|" + "---|" * 12]
    for r in rows:
        cells = [f"{r[c]:.2f}" if c in ("wikitext2", "ptb") else f"{100 * r[c]:.1f}" for c in columns]
        lines.append(f"| {r['method']} | {r['tuned']} | {r['params'] / 1e6:.1f}M | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    note = (f"\nDefault model (SmolLM2-135M-Instruct, GGUF Q4_1 dequantized), {args.target:.0%} of "
            f"parameters removed; perplexity on the first {args.ppl_windows} windows x 128 tokens; "
            f"zero-shot on the first {args.limit} items of each task (acc_norm for PIQA, ARC, OBQA; "
            f"acc for BoolQ, WinoGrande); " + ("no LoRA rows (--no-lora). " if args.no_lora else
            f"quick LoRA = {args.lora_steps or preset('quick').max_steps} steps on {len(examples)} "
            "self-generated answers with distillation. ") +
            f"Total {time.perf_counter() - start:.0f}s.\n")
    print(table + note)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(table + "\n" + note)
    out.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")
    print(json.dumps({"rows": rows}))


if __name__ == "__main__":
    main()
