"""Time of the per-layer sensitivity probes (`--allocation sensitivity`) on the default model:
`pruner.sensitivity.layer_sensitivity`, whose probes reuse the dense layers before them, against a
full forward pass per probe (the implementation before 2026-12-04, kept here as the reference),
side by side on the same plan (the default recipe's MLP part at 20%) and calibration tokens.

Also checks that both give the same losses. Last line: JSON {"ratio": reference / ours, ...}.
"""

import argparse
import json
import time

import torch

import common  # noqa: F401  (puts the repo on sys.path)

from pruner import calibration_ids, load_model
from pruner.activations import input_statistics
from pruner.groups import family
from pruner.importance import causal_lm_loss, score
from pruner.prune import make_plan
from pruner.recipes import recipe
from pruner.sensitivity import layer_sensitivity, plan_parts


@torch.no_grad()
def full_forward_probes(model, input_ids, plan, stats, batch_size=8):
    """One full forward per probe (and one for the base): the reference."""
    def mean_loss():
        return sum(float(causal_lm_loss(model, b)) * len(b) for b in torch.split(input_ids, batch_size)) \
            / len(input_ids)

    base, losses = mean_loss(), []
    for kind, layer, kept in plan_parts(plan):
        fam = family(model, kind, layer)
        linear = model.get_submodule(fam.last.module)
        mask = torch.zeros(linear.in_features, dtype=torch.bool)
        mask[fam.kept_inputs(kept)] = True
        fill = stats[(layer, fam.block)].mean.to(linear.weight.dtype)
        handle = linear.register_forward_pre_hook(
            lambda m, args: (torch.where(mask, args[0], fill.to(args[0].dtype)),) + tuple(args[1:]))
        try:
            losses.append(mean_loss() - base)
        finally:
            handle.remove()
    return losses


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=1024, help="calibration tokens the probes use")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    model, tok = load_model("default")[:2]
    ids = calibration_ids(tok, "builtin", num_samples=args.tokens // 128, seq_len=128, seed=0)
    score_config, prune_config = recipe("default", prune_overrides={"amount": 0.2, "unit": "parameters"})
    plan = make_plan(model, score(model, ids, score_config), prune_config)
    stats = input_statistics(model, ids)
    ours, reference = [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        fast = layer_sensitivity(model, ids, plan, stats, max_tokens=None)
        ours.append(time.perf_counter() - start)
        start = time.perf_counter()
        slow = full_forward_probes(model, ids, plan, stats)
        reference.append(time.perf_counter() - start)
    diff = max(abs(a - b) for a, b in zip(fast.loss_increase, slow))
    print(f"{len(slow)} probes on {ids.numel()} tokens: ours {min(ours):.1f} s, one full forward each "
          f"{min(reference):.1f} s; largest loss-increase difference {diff:.2e} nats")
    print(json.dumps({"ratio": round(min(reference) / min(ours), 3), "ours_s": round(min(ours), 2),
                      "reference_s": round(min(reference), 2), "probes": len(slow), "tokens": ids.numel(),
                      "max_abs_diff": diff, "machine": common.machine()}))


if __name__ == "__main__":
    main()
