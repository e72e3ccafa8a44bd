"""Per-layer ratios shaped by each layer's own scores (#19's search for a better default): the
default's depth allocation cuts early layers deeper on a fixed linear ramp; here layer l's weight is
additionally (median first-order Taylor score of its MLP channels / the geometric mean of those
medians) ** -power, so a layer whose channels the criterion rates low loses more, a layer it rates
high loses less, at the same total (the engine's depth_ratios normalization and cap). The scores
are the ones the Prune step computes anyway, so nothing more is measured. `--power 0` is the
depth ramp alone (`--spread`, 0.5); `--spread 0 --power P` is the score shape alone.

Measured 2026-12-05 (Intel Xeon with AMX; `bench/results/score_shape_self.json`), seed 0 against the
ramp alone's 2.069x: power 0.5 2.070x, **1 2.050x**, 2 2.063x; power 1 without the ramp 2.106x
(one ratio: 2.117x); power 1 on seeds 1-5: 2.226 / 2.039 / 2.094 / 2.133 / 2.023: **mean of six
2.094x against the ramp alone's 2.117x**, better on every draw. The engine took it as
`PruneConfig.score_shape` (1 in the default recipe; `bench/depth_ramp.py --slope -0.5
--score-shape 1` runs the engine's path and gives this script's figures to the digit).

    python bench/score_mass_allocation.py --power 0.5 --spread 0.5 --seed 0 --data-dir ../shared/data

Prints the WikiText-2 perplexity (first `--windows` windows of 128 tokens) over the dense model's,
on the default calibration (self-generated, 32 x 128, one seed), and the MLP widths.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import replace

import common

from pruner import prune
from pruner.recipes import recipe


def shaped_layer_ratios(power: float):
    """prune.layer_ratios with the depth ramp's weights scaled by the layers' median scores."""
    from pruner.sensitivity import MAX_LAYER_RATIO

    def layer_ratios(scores, config, ratio, layers, kind, original_counts, sensitivity=None, removals=None):
        ramp = original(scores, replace(config, allocation="depth"), ratio, layers, kind, original_counts)
        if not ramp:
            return ramp
        rows = scores[scores.kind == kind].groupby("layer")
        sizes = {layer: original_counts.get((kind, layer), int(rows.size()[layer])) for layer in ramp}
        medians = {layer: max(float(rows.score.median()[layer]), 1e-30) for layer in ramp}
        geo = math.exp(sum(math.log(m) for m in medians.values()) / len(medians))
        weights = {layer: ramp[layer] * (medians[layer] / geo) ** -power for layer in ramp}
        scale = ratio * sum(sizes.values()) / sum(sizes[layer] * w for layer, w in weights.items())
        return {layer: min(MAX_LAYER_RATIO, scale * w) for layer, w in weights.items()}

    original = prune.layer_ratios
    return layer_ratios


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--power", type=float, default=0.5, help="exponent of the median-score shape (0: none)")
    ap.add_argument("--spread", type=float, default=0.5, help="the depth ramp's spread (0: flat)")
    common.add_self_draw_args(ap)
    args = ap.parse_args()

    model, _, ids, ppl = common.self_draw(args.seed, args.windows, args.data_dir)
    dense = ppl(model)
    score_config, prune_config = recipe("default")
    prune_config = replace(prune_config, layer_spread=args.spread, score_shape=0.0)   # the shape is patched in
    if args.power:
        prune.layer_ratios = shaped_layer_ratios(args.power)
    figures = common.pruned_figures(model, ids, score_config, prune_config, ppl, dense)
    print(json.dumps({"seed": args.seed, "power": args.power, "spread": args.spread, **figures}))


if __name__ == "__main__":
    main()
