"""Usage: python bench/thorough_dtypes.py DATA_DIR PRUNED_DIR STEPS

On the GPU: the thorough preset on the default recipe's pruned default model, three ways:
bfloat16 weights with float32 masters (this change), bfloat16 weights stepped directly (before),
float32 weights with bfloat16 autocast (the CPU's way). Seconds of training and WikiText-2 ppl."""
import json, sys, time
import torch
import pruner.recover as R
from pruner import load_model
from pruner.evaluate import perplexity

data, pruned_dir, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
ppl = lambda m, tok: perplexity(m, tok, "wikitext2", max_windows=256, data_dir_path=data, progress=False)["ppl"]


class SteppedDirectly(R.FloatMasters):       # the code before: AdamW on the 16-bit weights themselves
    def __init__(self, params):
        self.pairs, self.params = [], list(params)


OURS = R.FloatMasters                          # restored after each way
sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
res = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu", "torch": torch.__version__, "steps": steps}
for name, dtype, masters in [("bf16 + float32 masters", torch.bfloat16, OURS),
                             ("bf16 stepped directly", torch.bfloat16, SteppedDirectly),
                             ("float32 + bf16 autocast", torch.float32, OURS)]:
    teacher, tok = load_model("default", dtype=dtype)[:2]
    model = load_model(pruned_dir, dtype=dtype)[0]
    if "dense" not in res:
        res["dense"], res["pruned"] = ppl(teacher, tok), ppl(model, tok)
    s = R.preset("thorough", max_steps=steps)
    ex = R.recovery_examples("lambada", tok, s.seq_len, data_dir_path=data, limit=R.example_limit(s))
    R.FloatMasters = masters
    try:
        rec = R.LoraRecovery(model, tok, ex, s, teacher=teacher, in_place=True)
    finally:
        R.FloatMasters = OURS
    sync(); t = time.perf_counter()
    for f in rec.train():
        pass
    sync(); train_s = time.perf_counter() - t
    merged = rec.merge(in_place=True)
    p = ppl(merged, tok)
    res[name] = {"train_s": round(train_s, 1), "ppl": p, "x_dense": p / res["dense"], "final_kl": rec.history[-1]["kl"],
                 "autocast": str(rec.autocast_dtype), "masters": len(rec.masters.pairs)}
    print(name, json.dumps(res[name]), flush=True)
    del teacher, model, rec, merged
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
print(json.dumps(res))
