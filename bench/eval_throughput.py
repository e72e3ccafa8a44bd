"""Our perplexity loop vs a bare torch loop on the same WikiText-2 windows, side by side.

Last line: JSON {"ratio": ours_seconds / bare_seconds}.
"""

import argparse
import json
import statistics
import time

import torch

import common
from pruner import load_model
from pruner.evaluate import corpus_ids, perplexity


@torch.no_grad()
def bare(model, windows, batch_size):
    nll, count = 0.0, 0
    for start in range(0, len(windows), batch_size):
        batch = windows[start: start + batch_size]
        logits = model(batch).logits[:, :-1]
        nll += torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), batch[:, 1:].flatten(),
                                                 reduction="sum").item()
        count += batch[:, 1:].numel()
    return nll / count


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--windows", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data-dir", default=str(common.SHARED_DATA))
    args = parser.parse_args()
    model, tok = load_model("default")
    ids = corpus_ids(tok, "wikitext2", args.data_dir)
    windows = ids[: args.windows * 128].view(args.windows, 128).to(next(model.parameters()).device)
    ours, theirs = [], []
    perplexity(model, tok, "wikitext2", max_windows=2, data_dir_path=args.data_dir, progress=False)
    for _ in range(args.repeats):
        t = time.perf_counter()
        bare(model, windows, 8)
        theirs.append(time.perf_counter() - t)
        t = time.perf_counter()
        perplexity(model, tok, "wikitext2", max_windows=args.windows, batch_size=8,
                   data_dir_path=args.data_dir, progress=False)
        ours.append(time.perf_counter() - t)
    ratio = statistics.median(ours) / statistics.median(theirs)
    print(f"ours {statistics.median(ours):.2f}s  bare {statistics.median(theirs):.2f}s  "
          f"({args.windows} windows x 128 tokens, median of {args.repeats})")
    print(json.dumps({"ratio": round(ratio, 3), "ours_s": statistics.median(ours),
                      "bare_s": statistics.median(theirs)}))


if __name__ == "__main__":
    main()
