"""Seconds per recovery step of this checkout against another commit's, side by side in one run.

A step's time on a shared machine drifts by 20-50% from hour to hour, so two runs an hour apart
cannot show a 10% change. This benchmark prunes the default model once (default recipe, built-in
calibration), then alternates fresh processes of the two checkouts (`git worktree` of --against in
a temporary folder) on the same pruned model, data and preset, each timing --steps optimizer steps
of `LoraRecovery.train()` (the first two left out as warm-up), and prints the median step of each
and their ratio.

    python bench/recovery_speed.py --against 5375ebb~1 --preset thorough --data-dir ../shared/data
    python bench/recovery_speed.py --against HEAD~3 --preset quick       # built-in text, offline

Last stdout line: JSON {"preset", "against", "this_s", "against_s", "ratio"} (ratio = this / against;
below 1 is faster). Measured on 2026-12-04 (AMD EPYC, 2 cores) against the step before the hand-made
logit gradient, the cached head casts, fused AdamW and the deferred heap trim (quick 0.553x,
thorough 0.68x; bench/results/recovery_speed.json): README, "A recovery step takes 0.55-0.76x its
former time".
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import common

REPO = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, sys, time
repo, pruned, preset_name, data, data_dir, steps = sys.argv[1:7]
sys.path.insert(0, repo)
sys.path.insert(0, repo + "/bench")
import common                                   # the checkout's own allocator mode
import statistics
from pruner import load_model
import pruner.recover as R
assert R.__file__.startswith(repo), R.__file__
original, tokenizer = load_model("default", device="cpu")[:2]
model = load_model(pruned, device="cpu")[0]
settings = R.preset(preset_name)
examples = R.recovery_examples(data, tokenizer, settings.seq_len, teacher=original,
                               data_dir_path=data_dir or None, limit=400)
run = R.LoraRecovery(model, tokenizer, examples, settings, teacher=original)
marks = []
for figures in run.train():
    marks.append(figures["elapsed"])
    if figures["step"] == int(steps):
        break
gaps = [b - a for a, b in zip(marks, marks[1:])][2:]
print(json.dumps({"median_s": statistics.median(gaps)}))
"""


def step_seconds(checkout: Path, pruned: Path, args) -> float:
    data = "lambada" if args.data_dir else "builtin"
    out = subprocess.run([sys.executable, "-c", CHILD, str(checkout), str(pruned), args.preset, data,
                          args.data_dir or "", str(args.steps)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["median_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", required=True, help="the commit to compare with (e.g. HEAD~1)")
    parser.add_argument("--preset", default="quick", choices=["quick", "thorough"])
    parser.add_argument("--steps", type=int, default=14, help="optimizer steps per process (2 are warm-up)")
    parser.add_argument("--rounds", type=int, default=3, help="processes of each checkout, alternating")
    parser.add_argument("--data-dir", default=None, help="book passages from here (else built-in text)")
    args = parser.parse_args()

    from pruner import calibration_ids, load_model, prune_model
    from pruner.recipes import recipe

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model, tokenizer = load_model("default", device="cpu")[:2]
        scoring, pruning = recipe("default", prune_overrides={"amount": 0.2, "unit": "parameters"})
        pruning, _ = pruning.normalized(model)
        ids = calibration_ids(tokenizer, "builtin", 10, 64, seed=0, model=model)
        prune_model(model, ids, scoring, pruning).model.save_pretrained(tmp / "pruned")
        del model
        other = tmp / "against"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(other), args.against],
                       check=True, capture_output=True)
        try:
            times: dict[str, list[float]] = {"this": [], "against": []}
            for round_ in range(args.rounds):
                for name, checkout in (("against", other), ("this", REPO)):
                    times[name].append(step_seconds(checkout, tmp / "pruned", args))
                    print(f"round {round_ + 1} {name:8s} {times[name][-1]:.3f} s a step", flush=True)
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(other)],
                           capture_output=True)
    this, against = statistics.median(times["this"]), statistics.median(times["against"])
    print(json.dumps({"preset": args.preset, "against": args.against, "this_s": round(this, 3),
                      "against_s": round(against, 3), "ratio": round(this / against, 3),
                      "machine": common.machine()}))


if __name__ == "__main__":
    main()
