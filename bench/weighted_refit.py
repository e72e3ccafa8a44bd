"""Token-weighted least-squares refit (#19's search for a better default): the default recipe's
refit of each pruned down_proj weighs every calibration token equally; here each token weighs
by how much the loss depends on that layer's MLP output there, the squared norm of the dense
model's gradient of the next-token loss with respect to it, raised to `--power` (1: the Fisher
diagonal per token, as GuidedQuant weighs its layer-wise objective; 0.5: the gradient's norm; 0:
the default), normalized to mean 1 per layer. Measures WikiText-2 perplexity against the dense
model on the default calibration (self-generated, 32 x 128).

    python bench/weighted_refit.py --power 1 --windows 256 --data-dir ../shared/data

Measured 2026-12-05 (seed-0 self draw, 256 windows, AVX2-only EPYC): power 0 (the default's equal
weights) 2.117x, 0.5 2.122x, 1 2.130x (the weights' largest value 20-240 times their mean): the
tokens where the dense model's loss leans hardest on a layer are not the ones whose fit carries to
the pruned model's loss. Not taken (README, *Pruning quality*). With equal weights (`--power 0`)
the refit's damping on this calibration: 1 2.125x, 3 (the default) 2.117x, 10 2.136x.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import common
from pruner import prune_model, refit
from pruner.recipes import recipe


def token_weights(model, ids: torch.Tensor, power: float, batch_size: int = 8) -> dict[int, torch.Tensor]:
    """layer -> (samples, seq) weights: |dL/d mlp_out|^(2 power) of the dense model, mean 1."""
    layers = model.model.layers
    grads: dict[int, list[torch.Tensor]] = {i: [] for i in range(len(layers))}

    def watch(i):
        def hook(module, args, out):
            out.register_hook(lambda g: grads[i].append((g.float() ** 2).sum(-1).detach()))  # (b, seq)
        return hook

    common.backward_through_activations(model, ids, [(layer.mlp, watch(i)) for i, layer in enumerate(layers)],
                                        batch_size)
    weights = {}
    for i, parts in grads.items():
        w = torch.cat(parts) ** power                                   # (samples, seq)
        weights[i] = w / w.mean()
    return weights


def weighted_sums(weights: dict[int, torch.Tensor], batch_size: int = 8):
    """A `kept_input_sums` whose sums weigh each token by weights[layer]."""

    def kept_input_sums(stream, layer, module, kept):
        sums = refit.FitSums(torch.as_tensor(kept, device=module.weight.device))
        batches = iter(torch.split(weights[layer], batch_size))

        def hook(mod, args):
            w = next(batches).reshape(-1).to(args[0].device)                # (tokens,)
            h = args[0].detach().reshape(-1, args[0].shape[-1])              # (tokens, in)
            sums.add(h, mod.weight.detach(), mod.bias.detach() if mod.bias is not None else None, token_weights=w)

        stream.run(layer, module, hook)
        return sums

    return kept_input_sums


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--power", type=float, default=1.0)
    ap.add_argument("--damping", type=float, default=refit.REFIT_DAMPING,
                    help="the refit's damping (x the mean diagonal of the kept inputs' Gram matrix)")
    common.add_self_draw_args(ap)
    args = ap.parse_args()

    model, _, ids, ppl = common.self_draw(args.seed, args.windows, args.data_dir)
    dense = ppl(model)
    start = time.perf_counter()
    weights = token_weights(model, ids, args.power)
    refit.kept_input_sums = weighted_sums(weights)
    refit.refit_solution.__defaults__ = (args.damping,)      # what the prune path's refit calls it with
    pruned = prune_model(model, ids, *recipe("default")).model
    seconds = time.perf_counter() - start
    value = ppl(pruned)
    spread = {i: [round(float(w.max()), 2), round(float((w ** 2).mean()), 2)] for i, w in weights.items()}
    print(json.dumps({"seed": args.seed, "power": args.power, "damping": args.damping, "dense": dense, "x_dense": value / dense,
                      "seconds": seconds, "weight_max_and_mean_square": spread}))


if __name__ == "__main__":
    main()
