"""Our LoRA recovery step vs a bare peft + torch loop on the same batches, side by side.

Both: LoRA r=8 / alpha=16 / dropout 0.05 on the seven projections, AdamW, grad-norm clip 1.0,
batch 4 x 128 tokens of the built-in text, no distillation, float32 arithmetic (ours with
`mixed_precision` off, so both do the same sums). Last line: JSON {"ratio": ...}; target <= 1.1.
A third loop, ours with `mixed_precision` on, is timed in the same rounds: its step / our float32
step is the bfloat16 speed-up where the CPU multiplies bfloat16 natively ("mixed_speedup"; 1.0
where it does not, since then nothing changes).
"""

import argparse
import copy
import json
import statistics
import time
from dataclasses import replace

import torch

import common  # noqa: F401  (puts the repo on sys.path)
from pruner import load_model
from pruner.recover import (LLM_PRUNER_TARGETS, LoraRecovery, LoraSettings, batches, collate,
                            text_examples, tokenize_examples)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    from peft import LoraConfig, get_peft_model

    model, tok = load_model("default")
    settings = LoraSettings(batch_size=4, seq_len=128, max_steps=args.steps + 1, warmup_steps=1,
                            learning_rate=1e-4, seed=0, mixed_precision=False)
    examples = text_examples("builtin", tok, 128)
    ours = LoraRecovery(model, tok, examples, settings)
    mixed = LoraRecovery(model, tok, examples, replace(settings, mixed_precision=True))
    # the bare loop gets exactly the batches ours draws, in the same order (same seeded shuffle),
    # so both steps see the same token counts
    same_order = batches(tokenize_examples(examples, tok, 128), settings.batch_size, settings.seed)
    bare_batches = [collate(next(same_order), tok.pad_token_id) for _ in range(args.steps + 1)]

    base = copy.deepcopy(model)
    peft_model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05,
                                                 target_modules=list(LLM_PRUNER_TARGETS), task_type="CAUSAL_LM"))
    params = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    peft_model.train()

    def bare_step(batch):
        out = peft_model(**batch, use_cache=False)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    bare_step(bare_batches[0])
    ours.train_step()                                  # warm-up all three
    mixed.train_step()
    t_ours, t_bare, t_mixed = [], [], []
    for i in range(1, args.steps + 1):
        t = time.perf_counter()
        bare_step(bare_batches[i])
        t_bare.append(time.perf_counter() - t)
        t = time.perf_counter()
        ours.train_step()
        t_ours.append(time.perf_counter() - t)
        t = time.perf_counter()
        mixed.train_step()
        t_mixed.append(time.perf_counter() - t)
    ratio = statistics.median(t_ours) / statistics.median(t_bare)
    speedup = statistics.median(t_ours) / statistics.median(t_mixed)
    print(f"ours {statistics.median(t_ours):.2f}s/step  bare peft loop {statistics.median(t_bare):.2f}s/step  "
          f"ours in bfloat16 {statistics.median(t_mixed):.2f}s/step ({mixed.autocast_dtype or 'not native here'})")
    print(json.dumps({"ratio": round(ratio, 3), "ours_s": statistics.median(t_ours),
                      "bare_s": statistics.median(t_bare), "mixed_s": statistics.median(t_mixed),
                      "mixed_speedup": round(speedup, 3)}))


if __name__ == "__main__":
    main()
