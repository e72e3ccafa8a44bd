"""Peak memory of pruning a ~1B-parameter Llama-shaped model with the default recipe, in place
(as the CLI does), against the model's own weight bytes. The model is built locally with random
weights (no download); calibration is random token ids (the memory does not depend on the text).

    python bench/prune_memory.py                 # ~1.1B parameters, float32
    python bench/prune_memory.py --layers 4      # a quicker, smaller check

Prints the process's peak resident memory while scoring, planning and slicing, divided by the
weight bytes, in the glibc allocator mode the CLI and the dashboard's server run in
(`resources.return_large_frees_to_os`, set by bench/common.py: freed large blocks go back to the OS); last stdout line {"ratio": ..., "peak_rss_gb": ..., "weights_gb": ...}. Target <= 1.3.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace

import torch

import common  # noqa: F401  (puts the repo on sys.path, sets the CLI's allocator mode)
from pruner import prune_model
from pruner.recipes import recipe
from pruner.resources import ALLOCATOR
from pruner.stats import PeakMemory, rss_bytes, weight_bytes


def llama_1b(layers: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=32000, hidden_size=2048, intermediate_size=8192, num_hidden_layers=layers,
                         num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=2048,
                         tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model.to_empty(device="cpu")
    with torch.no_grad():                      # small random weights, one tensor at a time
        for name, p in model.named_parameters():
            if "norm" in name:
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02)
    model.model.rotary_emb = type(model.model.rotary_emb)(config=config)
    return model.eval()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--low-memory", choices=("on", "auto"), default="on",
                        help="on: recompute layers in the backward pass (what a model that fills its "
                             "device gets); auto: keep activations when they fit (faster)")
    parser.add_argument("--score-shape", type=float, default=None,
                        help="PruneConfig.score_shape (default: the default recipe's; 0: the depth ramp alone)")
    parser.add_argument("--criterion", default=None, help="ScoreConfig.criterion (default: the default recipe's)")
    args = parser.parse_args()

    model = llama_1b(args.layers)
    weights = weight_bytes(model)
    n_params = sum(p.numel() for p in model.parameters())
    ids = torch.randint(0, 32000, (args.samples, args.seq_len), generator=torch.Generator().manual_seed(0))
    score_config, prune_config = recipe("default")
    score_config = replace(score_config, low_memory=True if args.low_memory == "on" else None)
    if args.score_shape is not None:
        prune_config = replace(prune_config, score_shape=args.score_shape)
    if args.criterion is not None:
        score_config = replace(score_config, criterion=args.criterion)
    print(f"{n_params / 1e9:.2f}B parameters, {weights / 2**30:.2f} GB of weights; RSS before pruning "
          f"{rss_bytes() / 2**30:.2f} GB", flush=True)
    start = time.perf_counter()
    with PeakMemory("cpu", interval=0.005) as peak:
        result = prune_model(model, ids, score_config, prune_config, in_place=True)
    peak_rss = peak.start + peak.peak_above_start
    print("kept MLP widths:", result.widths_after.intermediate_size.tolist())
    print(f"pruned in {time.perf_counter() - start:.0f}s: {result.report['params_before']:,} -> "
          f"{result.report['params_after']:,} parameters; peak RSS {peak_rss / 2**30:.2f} GB = "
          f"{peak_rss / weights:.2f} x the dense weights")
    print(json.dumps({"ratio": round(peak_rss / weights, 3), "low_memory": args.low_memory, "bounded_allocator": ALLOCATOR.bounded_threshold is not None,
                      "peak_rss_gb": round(peak_rss / 2**30, 3),
                      "weights_gb": round(weights / 2**30, 3), "params": n_params}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
