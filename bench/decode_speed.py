"""Is the pruned model really faster? Greedy decoding of the dense and the pruned default model,
side by side in one run (same prompt, length and threads; runs alternate between the models, the
median counts), against the ideal speed-up = dense / pruned weight bytes read per generated token
(every weight is read once per token in decoding; the embedding is read as lm_head).

    python bench/decode_speed.py                     # default recipe, kept MLP widths as planned
    python bench/decode_speed.py --round-to 1,32,64  # one row per alignment of the kept widths

Last stdout line: {"ratio": measured speed-up / ideal speed-up for the first --round-to value, ...}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pruner import calibration_ids, load_model, prune_model  # noqa: E402
from pruner.generate import PAPER_PROMPT  # noqa: E402
from pruner.recipes import recipe  # noqa: E402


def weight_bytes_read(model) -> int:
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel() * p.element_size()
    return total


@torch.no_grad()
def decode_seconds(model, ids, new_tokens: int) -> float:
    kw = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
              attention_mask=torch.ones_like(ids), pad_token_id=0)
    start = time.perf_counter()
    model.generate(ids, **kw)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--round-to", default="1", help="comma list of kept-width multiples to compare")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    dense, tok = load_model("default", device="cpu")
    ids_calib = calibration_ids(tok, "builtin", 10, 64)
    prompt = tok(PAPER_PROMPT, return_tensors="pt").input_ids
    score_config, prune_config = recipe("default")
    rows = []
    for multiple in [int(x) for x in args.round_to.split(",")]:
        pruned = prune_model(dense, ids_calib, score_config, replace(prune_config, round_to=multiple)).model
        widths = sorted({layer.mlp.down_proj.in_features for layer in pruned.model.layers})
        for model in (dense, pruned):                                     # warm-up
            decode_seconds(model, prompt, 4)
        times = {"dense": [], "pruned": []}
        for _ in range(args.runs):                                        # alternate the models
            times["dense"].append(decode_seconds(dense, prompt, args.new_tokens))
            times["pruned"].append(decode_seconds(pruned, prompt, args.new_tokens))
        dense_s, pruned_s = statistics.median(times["dense"]), statistics.median(times["pruned"])
        speedup = dense_s / pruned_s
        ideal = weight_bytes_read(dense) / weight_bytes_read(pruned)
        spread = {k: round((max(v) - min(v)) / statistics.median(v), 3) for k, v in times.items()}
        row = {"round_to": multiple, "mlp_widths": widths, "dense_tok_s": round(args.new_tokens / dense_s, 2),
               "pruned_tok_s": round(args.new_tokens / pruned_s, 2), "speedup": round(speedup, 3),
               "ideal": round(ideal, 3), "ratio": round(speedup / ideal, 3), "spread": spread}
        rows.append(row)
        print(json.dumps(row), flush=True)
        del pruned
    print(f"threads {torch.get_num_threads()}, {args.new_tokens} new tokens, median of {args.runs} runs")
    print(json.dumps({"ratio": rows[0]["ratio"], "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
