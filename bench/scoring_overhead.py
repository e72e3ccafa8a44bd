"""Time of taylor-element1 scoring on the default model vs a bare torch loop doing the same
forward + backward pass (10 x 64 calibration tokens), measured side by side, interleaved.

Ours includes everything a user waits for: hooks that reduce gradients to group scores and
building the DataFrame. The low-memory recompute is on when `auto` finds memory short (never
for the default model here) or with --low-memory on (one extra forward pass: about 1.35x).
Last line: JSON {"ratio": ...}; target <= 1.3.
"""

import argparse
import json
import statistics
import time

import torch

import common  # noqa: F401  (puts the repo on sys.path)

from pruner import ScoreConfig, calibration_ids, load_model, score


def bare_pass(model, ids):
    model.zero_grad(set_to_none=True)
    loss = model(input_ids=ids, labels=ids, use_cache=False).loss
    loss.backward()
    model.zero_grad(set_to_none=True)


def only_projections_need_grad(model, enabled):
    """The strict baseline: gradients only for the weights that scoring reads (q/k/v/o,
    gate/up/down), as our scorer does; the naive loop also computes the embedding gradient."""
    for name, p in model.named_parameters():
        p.requires_grad_(not enabled or name.endswith("_proj.weight"))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--low-memory", choices=["auto", "on", "off"], default="auto")
    args = parser.parse_args()
    model, tok = load_model("default")
    device = next(model.parameters()).device
    ids = calibration_ids(tok, "builtin", num_samples=10, seq_len=64, seed=0).to(device)
    low_memory = {"auto": None, "on": True, "off": False}[args.low_memory]
    config = ScoreConfig("taylor-element1", low_memory=low_memory)

    def timed(fn):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    bare_pass(model, ids)
    score(model, ids, config)                       # warm-up both
    ours, naive, strict = [], [], []
    for _ in range(args.repeats):
        naive.append(timed(lambda: bare_pass(model, ids)))
        only_projections_need_grad(model, True)
        strict.append(timed(lambda: bare_pass(model, ids)))
        only_projections_need_grad(model, False)
        ours.append(timed(lambda: score(model, ids, config)))
    med = {k: statistics.median(v) for k, v in (("ours", ours), ("naive", naive), ("strict", strict))}
    ratio = med["ours"] / med["strict"]
    print(f"ours {med['ours']:.3f}s  bare loop {med['strict']:.3f}s (same weights need grad)  "
          f"naive loop {med['naive']:.3f}s (all weights)  median of {args.repeats}, {device}, "
          f"low_memory={config.low_memory}")
    print(json.dumps({"ratio": round(ratio, 3), "ratio_vs_naive": round(med["ours"] / med["naive"], 3),
                      "ours_s": round(med["ours"], 4), "bare_s": round(med["strict"], 4),
                      "naive_s": round(med["naive"], 4), "device": str(device),
                      "low_memory": config.low_memory}))


if __name__ == "__main__":
    main()
