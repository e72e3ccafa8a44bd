"""Compensation-aware Taylor importance (#19's search for a better default): the default recipe
ranks an MLP channel j by first-order Taylor on its down_proj column, sum_i |W_ij G_ij| with
G = sum_t delta_t h_t^T (delta: the loss's gradient at down_proj's output, h: its input), the
loss change of removing the channel outright. The recipe never removes a channel outright: a bias
(mean compensation, and the refit's) takes over its mean, so the first-order change is that of
removing h_j - mu_j, sum_i |W_ij (G_ij - mu_j S_i)| with S = sum_t delta_t and mu the channel's mean
input. `--blend b` ranks by (1 - b) plain + b centered, each normalized to mean 1 per layer;
`--partner wanda` blends plain Taylor with Wanda-sp's sum_i |W_ij| x RMS(h_j) instead (two criteria
that fail differently, one ranking). Measures WikiText-2 perplexity against
the dense model on the default calibration (self-generated, 32 x 128), with the default recipe's
refit.

    python bench/centered_taylor.py --blend 1 --windows 256 --data-dir ../shared/data

Measured 2026-12-05 (seed-0 self draw, 256 windows, AVX2-only EPYC): plain (the default, which the
script's own G reproduces: correlation 1.0 with the engine's scores in every layer) 2.117x,
centered 2.232x; half plain Taylor and half Wanda-sp (`--partner wanda --blend 0.5`) 2.133x. Not
taken (README, *Pruning quality*).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace

import torch

import common
from pruner import prune_model
from pruner.importance import score
from pruner.prune import score_kinds
from pruner.recipes import recipe


def down_proj_sums(model, ids: torch.Tensor, batch_size: int = 8) -> dict[int, tuple]:
    """layer -> (G (d, d_ff), S (d,), mu (d_ff,), RMS (d_ff,)) of every down_proj on the dense model."""
    layers = model.model.layers
    sums = {i: [0.0, 0.0, 0.0, 0, 0.0] for i in range(len(layers))}

    def watch(i):
        def hook(module, args, out):
            h = args[0].detach().float().reshape(-1, args[0].shape[-1])                 # (tokens, d_ff)

            def grad_hook(g):
                delta = g.float().reshape(-1, g.shape[-1])                             # (tokens, d)
                s = sums[i]
                s[0] = s[0] + delta.T @ h
                s[1] = s[1] + delta.sum(0)
            sums[i][2] = sums[i][2] + h.sum(0)
            sums[i][4] = sums[i][4] + h.square().sum(0)
            sums[i][3] += h.shape[0]
            out.register_hook(grad_hook)
        return hook

    common.backward_through_activations(model, ids, [(layer.mlp.down_proj, watch(i)) for i, layer in enumerate(layers)],
                                        batch_size)
    return {i: (g, s, m / n, (q / n).sqrt()) for i, (g, s, m, n, q) in sums.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--blend", type=float, default=1.0)
    ap.add_argument("--partner", choices=["centered", "wanda"], default="centered")
    common.add_self_draw_args(ap)
    args = ap.parse_args()

    model, _, ids, ppl = common.self_draw(args.seed, args.windows, args.data_dir)
    dense = ppl(model)
    score_config, prune_config = recipe("default")
    start = time.perf_counter()
    frame = score(model, ids, replace(score_config, kinds=score_kinds(prune_config)))
    sums = down_proj_sums(model, ids)
    agreement = {}
    for layer, (g, s, mu, rms) in sums.items():
        w = model.model.layers[layer].mlp.down_proj.weight.detach().float()            # (d, d_ff)
        plain = (w * g).abs().sum(0)                                                  # (d_ff,)
        if args.partner == "centered":
            partner = (w * (g - s[:, None] * mu[None, :])).abs().sum(0)               # (d_ff,)
        else:
            partner = w.abs().sum(0) * rms                                            # (d_ff,)
        rows = (frame.kind == "mlp") & (frame.layer == layer)
        if not rows.any():
            continue
        groups = frame.loc[rows, "group"].to_numpy()
        engine = torch.as_tensor(frame.loc[rows, "score"].to_numpy(), dtype=torch.float64)
        mine = plain.double()[groups]
        agreement[layer] = round(float(torch.corrcoef(torch.stack([engine, mine]))[0, 1]), 4)
        blended = (1 - args.blend) * plain / plain.mean() + args.blend * partner / partner.mean()
        frame.loc[rows, "score"] = blended.double()[groups].numpy()
    pruned = prune_model(model, ids, score_config, prune_config, scores=frame).model
    seconds = time.perf_counter() - start
    value = ppl(pruned)
    print(json.dumps({"seed": args.seed, "partner": args.partner, "blend": args.blend, "dense": dense, "x_dense": value / dense,
                      "seconds": seconds, "plain_vs_engine_correlation": agreement}))


if __name__ == "__main__":
    main()
