"""The default recipe with some of its PruneConfig / ScoreConfig fields changed (#19's search for a
better default): WikiText-2 perplexity over the dense model's at 20% of parameters, on the default
calibration (self-generated, 32 x 128) of each seed, the setting of the other lever scripts, or on
other draws (`--calib-data lambada --calib-samples 10 --calib-len 64`: bench/methods.py's book draws).

    python bench/default_lever.py --set mlp_layers=2,28 --seeds 0 --out bench/results/levers_default.json

`--set FIELD=VALUE` (repeatable) takes any field of either config, VALUE as JSON or as comma-separated
numbers for a pair (`mlp_layers=2,28`); each run is appended to `--out` with its settings (the
criterion always named), calibration, MLP widths and machine.
`--shape-quantile Q` shapes the depth ramp by each layer's Q-quantile score instead of its median
(`pruner.prune.score_shape`'s `quantile`; the default recipe takes the median). `--refit-damping D`
sets the refit's damping (`pruner.refit.REFIT_DAMPING`, 3). `--sensitivity-power B` measures each layer's sensitivity
(the sensitivity allocation's probes) and multiplies each layer's ramp weight by (the geometric mean
of the sensitivities / its own) ** B besides the score shape (`pruner.prune.layer_ratios` patched).
`--argmax-labels` scores with the next-token loss toward the model's own most likely token at each
position instead of the calibration text's token, `--sampled-labels` toward a token sampled from its
next-token distribution there (`pruner.importance._ce_sum` patched). `--calib-continue N`: tokens
the model appends to each window of any source but self (pruner.data.continued_ids; the default's
192; 0 for the text alone, as every run before 2026-12-05 late evening).

Measured 2026-12-05 (Intel Xeon with AMX, `bench/results/levers_default.json`) on the seed-0 self draw
against the shaped ramp's 2.050x (the default then, ranking by taylor-element1): MLP layers 2-27
2.088x, 3-28 2.081x; layer_spread 0.75 2.050x (a tie), 0.25 2.089x; score_shape 1.5 2.071x; the shape
from the 0.25 / 0.1 / 0.75 quantile 2.072x / 2.084x / 2.067x; refit damping 1.5 / 6 2.056x / 2.055x
(and 10 on the three 10 x 64 book draws: 2.231x, a tie); the measured sensitivities on top at power
0.5 / 1 2.072x / 2.103x (a prune four times as long); 2 / 4 iterative steps 2.089x / 2.080x; argmax
labels 2.119x; **`criterion=taylor-squared`** (sum (g w)^2, Molchanov et al. 2019) **2.033x**, then
on seeds 1-5 2.164 / 2.037 / 2.072 / 2.099 / 1.986: **mean of six 2.065x against 2.094x**, better on
every draw; the default recipe took it. Squared scores at half the shape's strength
(`--set score_shape=0.5`, about |g w|'s allocation) 2.070x: the gain needs both.
Later that evening the self-generated text sampled plainly, temperature 1 with no top-p or top-k cut
(`--self-sampling '{"top_p": 1.0, "top_k": 0}'` then, the default since): **1.876 / 1.889 / 1.878 /
2.035 / 1.864 / 1.815, mean of six 1.893x against 2.065x**, better on every draw; temperature 0.7 with
the cuts (`--self-sampling '{"temperature": 0.7}'` then) 2.125x on seed 0. `--self-sampling '{"top_p":
0.95, "top_k": 50}'` reproduces the earlier figures on today's default.
On the three 10 x 64 book draws, the text alone (`--calib-continue 0`; first 128 windows; 2.208x):
`--sampled-labels` 2.211x against 2.213x (256 windows), taylor-second 2.267x, refit damping 1
2.257x, score_shape 1.5 / 0.5 2.281x / 2.193x, layer_spread 0.75 2.238x; each window continued by
192 tokens the model samples (the default since) 1.904x; by 64 / 448 tokens (`--calib-continue N`,
2026-12-06) 2.012x / 1.845x.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import fields, replace
from functools import partial
from pathlib import Path

import common

from pruner import data, importance, prune, refit
from pruner.recipes import recipe


def parse_setting(text: str):
    """'mlp_layers=2,28' -> ('mlp_layers', (2, 28)); 'score_shape=1.5' -> ('score_shape', 1.5);
    'allocation=uniform' -> ('allocation', 'uniform')."""
    name, _, value = text.partition("=")
    if "," in value:
        return name, tuple(json.loads(v) for v in value.split(","))
    try:
        return name, json.loads(value)
    except json.JSONDecodeError:
        return name, value


def ramp_with_sensitivity(power: float):
    """pruner.prune.layer_ratios where the sensitivity probes ran: the depth ramp shaped by the
    scores (as the default) and by (geometric-mean sensitivity / the layer's) ** power."""
    import numpy as np

    from pruner.sensitivity import floored_sensitivity

    plain = prune.layer_ratios

    def ratios(scores, config, ratio, layers, kind, original_counts, sensitivity=None, removals=None):
        if config.allocation != "sensitivity" or sensitivity is None:
            return plain(scores, config, ratio, layers, kind, original_counts, sensitivity, removals)
        sizes = prune.layer_sizes(scores, kind, layers, original_counts)
        s = floored_sensitivity(sensitivity, kind, sizes)
        mean_log = float(np.mean(np.log(list(s.values()))))
        shape = prune.score_shape(scores, kind, sizes, config.score_shape)
        shape = {layer: shape.get(layer, 1.0) * float(np.exp(power * (mean_log - np.log(s[layer]))))
                 for layer in sizes}
        return prune.depth_ratios(sizes, ratio, config.layer_spread, shape)
    return ratios


def own_label_loss(pick):
    """pruner.importance._ce_sum toward tokens the model picks itself from its detached (n, V) logits
    at each position (`labels` ignored): `pick` = ARGMAX (its most likely token) or SAMPLED (a token
    drawn from its next-token distribution: the squared gradient then estimates the true Fisher's
    diagonal on any text, as it does on text the model sampled itself; the global generator draws
    them, and activation checkpointing restores its state, so the recomputed forward draws the same)."""
    import torch

    def loss(head, hidden, labels):
        logits = head(hidden)                                               # (n, V)
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()
        return torch.nn.functional.cross_entropy(logits, pick(logits.detach()), reduction="sum")
    return loss


def ARGMAX(logits):
    return logits.argmax(-1)                                                # (n,)


def SAMPLED(logits):
    import torch

    return torch.multinomial(logits.softmax(-1), 1).squeeze(1)              # (n,)


def configs(settings: dict):
    """The default recipe's (ScoreConfig, PruneConfig) with `settings` applied to whichever has each."""
    score_config, prune_config = recipe("default")
    score_names = {f.name for f in fields(score_config)}
    prune_names = {f.name for f in fields(prune_config)}
    unknown = set(settings) - score_names - prune_names
    if unknown:
        raise SystemExit(f"no such config field: {', '.join(sorted(unknown))}")
    score_config = replace(score_config, **{k: v for k, v in settings.items() if k in score_names})
    prune_config = replace(prune_config, **{k: v for k, v in settings.items() if k in prune_names})
    return score_config, prune_config


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    ap.add_argument("--seeds", default="0", help="comma-separated calibration draws")
    ap.add_argument("--windows", type=int, default=256, help="WikiText-2 windows of 128 tokens")
    ap.add_argument("--calib-data", default="self", help="calibration source (bench/methods.py's draws: "
                    "lambada with --calib-samples 10 --calib-len 64 are the book draws)")
    ap.add_argument("--calib-samples", type=int, default=32)
    ap.add_argument("--calib-len", type=int, default=128)
    ap.add_argument("--calib-continue", type=int, default=data.CONTINUATION_TOKENS,
                    help="tokens the model appends to each window of any source but self (0: the text alone, "
                         "as every run before 2026-12-05 late evening)")
    ap.add_argument("--data-dir", default=str(common.SHARED_DATA))
    ap.add_argument("--shape-quantile", type=float, help="the score quantile that shapes the ramp (0.5: the median)")
    ap.add_argument("--refit-damping", type=float, help="the refit's damping (x the mean diagonal of the kept "
                    "inputs' Gram matrix)")
    ap.add_argument("--sensitivity-power", type=float, help="shape the ramp by the measured sensitivities too")
    ap.add_argument("--argmax-labels", action="store_true", help="score toward the model's own argmax tokens")
    ap.add_argument("--sampled-labels", action="store_true", help="score toward tokens the model samples "
                    "at each position (true Fisher) instead of the calibration text's next tokens")
    ap.add_argument("--self-sampling", type=json.loads, metavar="JSON",
                    help='the self-generated text\'s sampling settings over pruner.data.SELF_SAMPLING\'s, e.g. '
                         '\'{"top_p": 0.95, "top_k": 50}\' (the default until 2026-12-05)')
    ap.add_argument("--out", help="a JSON file the runs are appended to")
    args = ap.parse_args()

    settings = dict(parse_setting(s) for s in args.set)
    if args.sensitivity_power is not None:
        settings["allocation"] = "sensitivity"
        prune.layer_ratios = ramp_with_sensitivity(args.sensitivity_power)
    if args.shape_quantile is not None:
        prune.score_shape = partial(prune.score_shape, quantile=args.shape_quantile)
    if args.argmax_labels:
        importance._ce_sum = own_label_loss(ARGMAX)
    if args.sampled_labels:
        importance._ce_sum = own_label_loss(SAMPLED)
    if args.refit_damping is not None:
        refit.refit_solution.__defaults__ = (args.refit_damping,)     # what the prune path's refit calls
    score_config, prune_config = configs(settings)
    shown = {"criterion": score_config.criterion, **{k: list(v) if isinstance(v, tuple) else v
                                                     for k, v in settings.items()}}
    if args.calib_data == "self":
        shown["self_sampling"] = {**data.SELF_SAMPLING, **(args.self_sampling or {})}   # what the text was sampled with
    patches = {"shape_quantile": args.shape_quantile, "refit_damping": args.refit_damping,
               "sensitivity_power": args.sensitivity_power, "argmax_labels": args.argmax_labels or None,
               "sampled_labels": args.sampled_labels or None}
    shown.update({k: v for k, v in patches.items() if v is not None})
    runs = []
    for seed in (int(s) for s in args.seeds.split(",")):
        with common.self_sampling(args.self_sampling):          # the text and its cache key follow it
            model, _, ids, ppl = common.self_draw(seed, args.windows, args.data_dir, args.calib_data,
                                                  args.calib_samples, args.calib_len, args.calib_continue)
        dense = ppl(model)
        calibration = [args.calib_data, args.calib_samples, args.calib_len]
        if args.calib_data != "self" and args.calib_continue:
            calibration.append({"continued_by": int(ids.shape[1]) - args.calib_len})
        run = {"seed": seed, "settings": shown, "calibration": calibration,
               **common.pruned_figures(model, ids, score_config, prune_config, ppl, dense)}
        print(json.dumps({k: v for k, v in run.items() if k != "mlp_widths"}), flush=True)
        runs.append(run)
    if args.out:
        path = Path(args.out)
        record = json.loads(path.read_text()) if path.is_file() else {
            "setting": "default recipe at 20% of parameters with the runs' settings changed, calibration "
                       "(source, samples, length; seed), WikiText-2 first `windows` windows of 128 tokens",
            "reproduce": "python bench/default_lever.py --set FIELD=VALUE --seeds N --windows W",
            "runs": []}
        record["runs"] += [{**run, "windows": args.windows, "machine": common.machine()} for run in runs]
        path.write_text(json.dumps(record, indent=1) + "\n")
    if len(runs) > 1:
        print(f"mean of {len(runs)}: {sum(r['x_dense'] for r in runs) / len(runs):.4f}x")


if __name__ == "__main__":
    main()
