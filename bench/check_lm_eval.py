"""Check our zero-shot scoring against lm-evaluation-harness on the same model and items.

Needs `pip install lm_eval` (not a project dependency). For each task it sends our exact
(context, continuation) requests to lm-eval's HFLM.loglikelihood and compares the per-request
log-likelihoods and the resulting acc / acc_norm. Prompt formats were copied from lm-eval's
task yaml / utils (boolq, piqa, arc, openbookqa, winogrande, copa, hellaswag).
Last line: JSON {"max_abs_loglik_diff": ..., "acc_equal": true|false, ...}.
"""

import argparse
import json

import numpy as np

import common
from pruner import load_model
from pruner.evaluate import loglikelihoods, multiple_choice
from pruner.tasks import load_task


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--limit", type=int, default=40)
    parser.add_argument("--tasks", default="boolq,piqa,arc_easy,arc_challenge,openbookqa,winogrande,copa")
    parser.add_argument("--data-dir", default=str(common.SHARED_DATA))
    args = parser.parse_args()
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    model, tok = load_model("default", device="cpu")
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=16)
    report, worst, all_equal = {}, 0.0, True
    for task in args.tasks.split(","):
        docs = load_task(task, args.data_dir, args.limit)
        requests = [(c, x) for d in docs for c, x in zip(d.contexts, d.continuations)]
        ours = np.array(loglikelihoods(model, tok, requests, progress=False))
        instances = [Instance("loglikelihood", {}, req, i) for i, req in enumerate(requests)]
        theirs = np.array([ll for ll, _ in lm.loglikelihood(instances, disable_tqdm=True)])
        diff = float(np.abs(ours - theirs).max())
        worst = max(worst, diff)
        # metrics from lm-eval's numbers, computed with lm-eval's rule, vs ours end to end
        acc_theirs, norm_theirs, pos = [], [], 0
        for d in docs:
            lls = theirs[pos: pos + len(d.continuations)]
            pos += len(d.continuations)
            lengths = np.array([float(len(t)) for t in d.choice_texts])
            acc_theirs.append(np.argmax(lls) == d.gold)
            norm_theirs.append(np.argmax(lls / lengths) == d.gold)
        mine = multiple_choice(model, tok, task, docs=docs, progress=False)
        equal = mine["acc"] == float(np.mean(acc_theirs)) and \
            mine.get("acc_norm", float(np.mean(norm_theirs))) == float(np.mean(norm_theirs))
        all_equal &= equal
        report[task] = {"n": len(docs), "max_abs_loglik_diff": diff, "acc": mine["acc"],
                        "acc_lm_eval": float(np.mean(acc_theirs)), "acc_norm": mine.get("acc_norm"),
                        "acc_norm_lm_eval": float(np.mean(norm_theirs)), "equal": equal}
        print(f"{task:>14} n={len(docs)} max |dll|={diff:.2e} acc {mine['acc']:.3f} vs "
              f"{np.mean(acc_theirs):.3f}  {'OK' if equal else 'DIFFERENT'}")
    print(json.dumps({"max_abs_loglik_diff": worst, "acc_equal": all_equal, "tasks": report}))


if __name__ == "__main__":
    main()
