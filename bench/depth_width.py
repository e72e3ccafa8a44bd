"""Depth and width together (#19's search for a better default): remove the k decoder layers of
lowest ShortGPT block influence first, then prune the rest with the default recipe up to the same
share of the original's parameters, and measure WikiText-2 perplexity against the dense model.

    python bench/depth_width.py --layers 0,1,2 --seed 0 --windows 256 --data-dir ../shared/data

Calibration: the default's, 32 x 128 self-generated tokens of the given seed, used by both stages.
Prints one JSON line per k; measured 2026-12-04 (seed 0, 256 windows): k=0 2.117x, 1 2.290x,
2 2.432x dense (README, *Pruning quality*).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace

import common
from pruner import calibration_ids, load_model, prune_model
from pruner.evaluate import perplexity
from pruner.importance import block_influence
from pruner.recipes import recipe
from pruner.stats import count_params


def params(model) -> int:
    return count_params(model)["params"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", default="0,1,2", help="numbers of whole layers removed first")
    ap.add_argument("--amount", type=float, default=0.2, help="share of the original's parameters removed in all")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--windows", type=int, default=256)
    ap.add_argument("--data-dir", default=str(common.SHARED_DATA))
    args = ap.parse_args()

    model, tok = load_model()[:2]
    p0 = params(model)
    layer_params = count_params(model)["params_non_embedding"] / len(model.model.layers)
    ids = calibration_ids(tok, "self", 32, 128, seed=args.seed, data_dir_path=args.data_dir, model=model)
    ppl = lambda m: perplexity(m, tok, "wikitext2", 128, max_windows=args.windows, data_dir_path=args.data_dir,
                               progress=False)["ppl"]
    dense = ppl(model)
    print(json.dumps({"block_influence": [round(x, 4) for x in block_influence(model, ids)], "dense": dense}))
    for k in (int(x) for x in args.layers.split(",")):
        start = time.perf_counter()
        base = model
        if k:                       # just under k layers' share: the layer plan rounds it to k layers
            score_config, prune_config = recipe("shortgpt")
            prune_config = replace(prune_config, amount=(k * layer_params - 1) / p0, unit="parameters")
            base = prune_model(model, ids, score_config, prune_config).model
        dropped = len(model.model.layers) - len(base.model.layers)
        rest = (args.amount * p0 - (p0 - params(base))) / params(base)
        score_config, prune_config = recipe("default", prune_overrides={"amount": rest, "unit": "parameters"})
        pruned = prune_model(base, ids, score_config, prune_config).model
        value = ppl(pruned)
        print(json.dumps({"layers_removed": dropped, "seed": args.seed, "removed": 1 - params(pruned) / p0,
                          "ppl": value, "x_dense": value / dense, "seconds": time.perf_counter() - start}),
              flush=True)


if __name__ == "__main__":
    main()
