"""Per-layer ratios that grow (or shrink) with depth, with nothing measured (#19's search for a
better default): SlimGPT (Ling et al. 2024, arXiv 2412.18110) prunes deeper layers more
("incremental pruning ratio"), because a layer's error passes through every layer after it. Here
layer l of the pruned range 3..27 removes ratio x (1 + slope x x_l) of its MLP channels, x_l
running from -1 (layer 3) to +1 (layer 27), the same total (the engine's depth allocation,
`pruner.prune.depth_ratios`, whose spread is -slope; a positive slope turns it around), then the
default recipe with its refit. Measures
WikiText-2 perplexity against the dense model on the default calibration (self-generated,
32 x 128, one seed).

    python bench/depth_ramp.py --slope 0.25 --seed 0 --windows 256 --data-dir ../shared/data

Measured 2026-12-05 (AVX2-only EPYC; `bench/results/depth_ramp_self.json`), seed 0 against the
uniform 2.117x: slope +0.25 2.137x, -0.25 2.096x, **-0.5 2.069x**, -0.75 2.085x; then -0.5 on seeds
1-5: 2.238 / 2.078 / 2.128 / 2.145 / 2.042 against the uniform 2.280 / 2.131 / 2.163 / 2.231 /
2.089: **mean of six 2.117x against 2.168x**, better on every draw. The early layers, not the deep
ones, are the ones to cut deeper here. The default recipe took it (`allocation="depth"`,
`layer_spread=0.5`: the engine's own path, which gave seed 1's 2.238x to the digit).
`--slope 0` runs the uniform allocation.

The ramp runs alone (`score_shape=0`) unless `--score-shape P` shapes it by the layers' median
scores too (PruneConfig.score_shape: each layer's weight times (the geometric mean of the layers'
median channel scores / its own median) ** P, the same total; `--slope 0 --score-shape P` is the
shape alone). Measured the afternoon of 2026-12-05 (Intel Xeon with AMX;
`bench/results/score_shape_self.json`, first with a patched copy of the shape, which the engine's
path gives to the digit), seed 0 at slope -0.5 against the ramp alone's 2.069x: P = 0.5 2.070x,
**1 2.050x**, 2 2.063x; P = 1 at slope 0 2.106x (one ratio: 2.117x); P = 1 at slope -0.5 on seeds
1-5: 2.226 / 2.039 / 2.094 / 2.133 / 2.023: **mean of six 2.094x against the ramp alone's 2.117x**,
better on every draw. The default recipe took it (`score_shape=1`).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace

import common

from pruner import prune
from pruner.recipes import recipe


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--slope", type=float, default=0.25, help="ratio at the last pruned layer / the mean - 1")
    ap.add_argument("--score-shape", type=float, default=0.0, help="PruneConfig.score_shape (0: the ramp alone)")
    common.add_self_draw_args(ap)
    args = ap.parse_args()

    model, _, ids, ppl = common.self_draw(args.seed, args.windows, args.data_dir)
    dense = ppl(model)
    score_config, prune_config = recipe("default")
    prune_config = replace(prune_config, allocation="depth" if args.slope or args.score_shape else "uniform",
                           layer_spread=abs(args.slope), score_shape=args.score_shape)
    if args.slope > 0:                             # deeper layers cut more: the engine's ramp turned around
        falling = prune.depth_ratios
        prune.depth_ratios = lambda sizes, ratio, spread, shape=None: falling(sizes, ratio, -spread, shape)
    figures = common.pruned_figures(model, ids, score_config, prune_config, ppl, dense)
    print(json.dumps({"seed": args.seed, "slope": args.slope, "score_shape": args.score_shape, **figures}))


if __name__ == "__main__":
    main()
