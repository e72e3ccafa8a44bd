"""Perplexity, log-likelihoods and multiple-choice metrics against hand computations."""

import math

import numpy as np
import pytest
import torch

from pruner.data import DataUnavailableError, calibration_ids, text_rows
from pruner.evaluate import (encode_pair, evaluate, loglikelihoods, model_stats,
                             multiple_choice, perplexity)
from pruner.tasks import Doc, load_task


def test_wikitext_rows_match_datasets_layout(data_dir):
    rows = text_rows("wikitext2", data_dir)
    assert len(rows) == 4358
    assert rows[0] == "" and rows[1] == " = Robert Boulter = \n"
    ptb = text_rows("ptb", data_dir)
    assert len(ptb) == 3370 and not ptb[0].startswith(" ")


def test_missing_dataset_names_the_three_ways(tmp_path):
    with pytest.raises(DataUnavailableError) as err:     # PTB is not shipped (LDC-licensed text)
        text_rows("ptb", tmp_path)
    message = str(err.value)
    assert "--data-dir" in message and "hub" in message and "ptb.valid.txt" in message
    with pytest.raises(DataUnavailableError, match="three ways"):
        load_task("hellaswag", tmp_path)                  # no local copy, no slice, no hub


def test_perplexity_matches_a_hand_loop(vocab_model, tokenizer, data_dir):
    res = perplexity(vocab_model, tokenizer, "wikitext2", seq_len=32, max_windows=5, batch_size=2,
                     data_dir_path=data_dir, progress=False)
    ids = tokenizer("\n\n".join(text_rows("wikitext2", data_dir)), return_tensors="pt").input_ids[0]
    nlls = []
    with torch.no_grad():
        for w in range(5):
            window = ids[w * 32:(w + 1) * 32][None]
            logits = vocab_model(window).logits[0, :-1]
            nlls += torch.nn.functional.cross_entropy(logits, window[0, 1:], reduction="none").tolist()
    assert res["windows"] == 5 and res["tokens"] == 5 * 31
    assert res["ppl"] == pytest.approx(math.exp(np.mean(nlls)), rel=1e-5)


def test_loglikelihood_matches_a_hand_sum(vocab_model, tokenizer):
    requests = [("The cat sat on the", " mat"), ("Question: what is red?\nAnswer:", " an apple"),
                ("Hello ", "world")]
    got = loglikelihoods(vocab_model, tokenizer, requests, batch_size=2, progress=False)
    for (context, continuation), value in zip(requests, got):
        ctx, cont = encode_pair(tokenizer, context, continuation)
        ids = torch.tensor([ctx + cont])
        with torch.no_grad():
            logp = vocab_model(ids).logits[0].log_softmax(-1)
        expected = sum(logp[len(ctx) - 1 + j, t].item() for j, t in enumerate(cont))
        assert value == pytest.approx(expected, abs=1e-4)
    # trailing context space moves into the continuation, like lm-eval
    assert encode_pair(tokenizer, "Hello ", "world") == encode_pair(tokenizer, "Hello", " world")


def test_multiple_choice_metrics(vocab_model, tokenizer, monkeypatch):
    docs = [Doc(("q",) * 2, (" a", " bbbb"), 1, ("a", "bbbb")),
            Doc(("q",) * 2, (" a", " bbbb"), 0, ("a", "bbbb"))]
    fake = iter([[-1.0, -2.0, -1.0, -2.0]])
    monkeypatch.setattr("pruner.evaluate.loglikelihoods", lambda *a, **k: next(fake))
    res = multiple_choice(vocab_model, tokenizer, "arc_easy", docs=docs, progress=False)
    # acc picks choice 0 (-1 > -2): right once; acc_norm picks choice 1 (-2/4 > -1/1): right once
    assert res["acc"] == 0.5 and res["acc_norm"] == 0.5 and res["n"] == 2
    assert res["acc_stderr"] == pytest.approx(np.std([1, 0], ddof=1) / math.sqrt(2))


@pytest.mark.parametrize("task, context, continuation", [
    ("boolq", "\nQuestion: does ethanol take more energy make that produces?\nAnswer:", " no"),
    ("piqa", "Question: How do I ready a guinea pig cage for it's new occupants?\nAnswer:",
     " Provide the guinea pig with a cage"),
    ("arc_easy", "Question: Which statement best explains why photosynthesis is the foundation of "
                 "most food webs?\nAnswer:", " Sunlight is the source"),
    ("openbookqa", "they decide the best way to save money is to", " make more phone calls"),
    ("winogrande", "Sarah was a much better surgeon than Maria so Sarah", " always got the easier cases."),
    ("copa", "The man turned on the faucet therefore", "  the toilet filled with water."),
])
def test_prompt_formats_follow_lm_eval(data_dir, task, context, continuation):
    """The first item of each local task in lm-eval's stock format (see pruner/tasks.py)."""
    doc = load_task(task, data_dir, limit=1)[0]
    assert doc.contexts[0].endswith(context)
    assert not doc.contexts[0].startswith("Passage:")
    assert doc.continuations[0].startswith(continuation)


def test_all_offline_tasks_load(data_dir):
    sizes = {"boolq": 3270, "piqa": 1838, "arc_easy": 2376, "arc_challenge": 1172,
             "openbookqa": 500, "winogrande": 1267, "copa": 100}
    for task, n in sizes.items():
        docs = load_task(task, data_dir)
        assert len(docs) == n
        assert all(0 <= d.gold < len(d.continuations) for d in docs)


def test_evaluate_reports_paper_metric(vocab_model, tokenizer, data_dir):
    out = evaluate(vocab_model, tokenizer, ppl=["ptb"], tasks=["winogrande", "arc_easy"],
                   max_windows=2, limit=4, data_dir_path=data_dir, progress=False)
    assert set(out["ppl"]) == {"ptb"} and out["ppl"]["ptb"] > 1
    assert out["acc"]["arc_easy"] == out["details"]["arc_easy"]["acc_norm"]
    assert out["acc"]["winogrande"] == out["details"]["winogrande"]["acc"]
    assert out["acc_mean"] == pytest.approx(np.mean(list(out["acc"].values())))


def test_evaluate_names_each_part_before_it_starts(vocab_model, tokenizer):
    heard = []
    out = evaluate(vocab_model, tokenizer, ppl=["wikitext2"], tasks=["piqa"], max_windows=2, limit=3,
                   progress=False, on_part=lambda i, n, name: heard.append((i, n, name)))
    assert heard == [(0, 2, "wikitext2"), (1, 2, "piqa")]
    assert set(out["ppl"]) == {"wikitext2"} and set(out["acc"]) == {"piqa"}


def test_model_stats(vocab_model, tokenizer):
    stats = model_stats(vocab_model, tokenizer, seq_len=16)
    assert stats["params"] == sum(p.numel() for p in vocab_model.parameters())
    assert stats["macs_per_token"] > stats["params_non_embedding"] * 0.9
    assert stats["weight_mib"] > 0 and stats["tokens_per_s"] > 0


@pytest.mark.parametrize("grouped_kernel", [False, True])
def test_macs_per_token_by_hand(monkeypatch, grouped_kernel):
    """Every matmul of a tiny GQA Llama counted (hidden 32, 4 query heads of 8 sharing 2 KV heads,
    3 layers, MLP 48, vocabulary 96, 16 tokens): the projections and head, and q k^T and p v per
    query head, which torch's counter skipped on the CPU's fused attention kernel. With the grouped
    heads handed to the kernel as transformers does on a GPU, where torch's own formula (before
    2.13) asserted equal head counts and every CUDA prune failed."""
    from conftest import tiny_model
    from pruner.stats import macs_per_token

    if grouped_kernel:
        monkeypatch.setenv("TRANSFORMERS_SDPA_FORCE_GQA", "1")
    model = tiny_model(n_heads=4, n_kv=2)
    projections = 3 * (32 * 32 + 2 * 32 * 16 + 32 * 32 + 3 * 32 * 48) + 32 * 96
    attention = 3 * 4 * 16 * (8 + 8)          # per token: every query head over the 16 keys, q k^T and p v
    assert macs_per_token(model, 16) == projections + attention


def test_calibration_is_seeded(tokenizer):
    a = calibration_ids(tokenizer, "builtin", 4, 32, seed=1)
    b = calibration_ids(tokenizer, "builtin", 4, 32, seed=1)
    c = calibration_ids(tokenizer, "builtin", 4, 32, seed=2)
    assert a.shape == (4, 32) and torch.equal(a, b) and not torch.equal(a, c)
