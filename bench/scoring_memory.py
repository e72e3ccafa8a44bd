"""Peak memory of taylor-element2 scoring on the default model / the model's weight bytes.

Peak = weights + whatever scoring allocates on top (activations, gradients, statistics),
measured as the CUDA allocator peak on GPU or sampled RSS on CPU, in this process.
"ratio" is the low-memory mode (layer recompute + chunked vocabulary projection, which `auto`
turns on when activations would not fit); "ratio_fast_mode" stores activations instead.
Last line: JSON {"ratio": ...}; target <= 1.5.
"""

import json


import common  # noqa: F401  (puts the repo on sys.path)
from pruner import ScoreConfig, calibration_ids, load_model, score
from pruner.stats import PeakMemory, weight_bytes


def main():
    model, tok = load_model("default")
    device = next(model.parameters()).device
    ids = calibration_ids(tok, "builtin", num_samples=10, seq_len=64, seed=0).to(device)
    weights = weight_bytes(model)
    score(model, ids[:2], ScoreConfig("taylor-element1"))       # warm-up: allocator, kernels
    extra = {}
    for low_memory in (False, True):
        with PeakMemory(device) as mem:
            score(model, ids, ScoreConfig("taylor-element2", low_memory=low_memory))
        extra[low_memory] = mem.peak_above_start
        print(f"low_memory={low_memory}: weights {weights / 2**20:.0f} MiB, scoring adds "
              f"{mem.peak_above_start / 2**20:.0f} MiB at peak ({device}); ratio "
              f"{(weights + mem.peak_above_start) / weights:.2f}")
    print(json.dumps({"ratio": round((weights + extra[True]) / weights, 3),
                      "ratio_fast_mode": round((weights + extra[False]) / weights, 3),
                      "weights_mib": round(weights / 2**20, 1),
                      "peak_extra_mib": round(extra[True] / 2**20, 1), "device": str(device)}))


if __name__ == "__main__":
    main()
