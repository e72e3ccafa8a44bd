"""Importance criteria against independent references: finite differences, hand loops."""


import math

import pandas as pd
import pytest
import torch

from pruner.groups import attention_family, families, hidden_family, mlp_family
from pruner.importance import (AGGREGATIONS, COLUMNS, ScoreConfig, aggregate,
                               member_statistics, score)

from conftest import tiny_model


def loss_of(model, ids):
    logits = model(input_ids=ids, use_cache=False).logits[:, :-1]
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())


def full_gradients(model, ids):
    model.zero_grad()
    loss_of(model, ids).backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    model.zero_grad()
    return grads


def per_sample_fisher(model, ids):
    fisher = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for i in range(ids.shape[0]):
        for n, g in full_gradients(model, ids[i:i + 1]).items():
            fisher[n] += g.float() ** 2 / ids.shape[0]
    return fisher


def hand_member_scores(model, fam, elementwise):
    """(n_members, n_groups) by explicit slicing of every group: the reference."""
    params = dict(model.named_parameters())
    out = torch.zeros(len(fam.members), fam.n_groups, dtype=torch.float64)
    for g in range(fam.n_groups):
        for m, (name, dim, idx) in enumerate(fam.group(g)):
            out[m, g] = elementwise(name, params[name].detach()).index_select(dim, idx).sum()
    return out


def float64_rms_norm(self, x):
    # transformers' LlamaRMSNorm computes in float32 even for a float64 model, which would
    # drown the finite differences below in rounding noise
    return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))


def test_taylor_vector_is_directional_derivative(calib, monkeypatch):
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    monkeypatch.setattr(LlamaRMSNorm, "forward", float64_rms_norm)
    model = tiny_model(n_heads=4, n_kv=2, dtype=torch.float64)
    fams = [attention_family(model, 1), mlp_family(model, 2)]
    stats = member_statistics(model, calib, "taylor-vector", fams)
    params = dict(model.named_parameters())
    eps = 1e-5
    for fam, st in zip(fams, stats):
        for g in [0, fam.n_groups - 1]:
            group_total = 0.0
            for m, (name, dim, idx) in enumerate(fam.group(g)):
                p = params[name]
                original = p.detach().clone()

                def loss_scaled(e):
                    with torch.no_grad():
                        p.copy_(original)
                        p.index_copy_(dim, idx, original.index_select(dim, idx) * (1 - e))
                        return loss_of(model, calib).item()
                derivative = (loss_scaled(eps) - loss_scaled(-eps)) / (2 * eps)
                with torch.no_grad():
                    p.copy_(original)
                assert st[m, g].item() == pytest.approx(abs(derivative), rel=1e-4, abs=1e-9)
                group_total += abs(derivative)
            assert aggregate(st, "sum")[g].item() == pytest.approx(group_total, rel=1e-4)


@pytest.mark.parametrize("criterion", ["taylor-element1", "taylor-squared", "taylor-element2", "taylor-mix",
                                       "taylor-second", "l1", "l2"])
def test_elementwise_against_hand_loop(model, calib, criterion):
    fams = [attention_family(model, 0), mlp_family(model, 1), hidden_family(model)]
    grads = full_gradients(model, calib)
    first_order = ("taylor-element1", "taylor-squared", "l1", "l2")
    fisher = per_sample_fisher(model, calib) if criterion not in first_order else {}
    reference = {
        "taylor-element1": lambda n, w: (grads[n] * w).abs(),
        "taylor-squared": lambda n, w: (grads[n] * w) ** 2,           # Molchanov et al. 2019
        # the paper's element-wise second order, Hessian diagonal ~ Fisher (official param_mix)
        "taylor-element2": lambda n, w: (grads[n] * w - 0.5 * fisher[n] * w ** 2).abs(),
        "taylor-mix": lambda n, w: (grads[n] * w - 0.5 * fisher[n] * w ** 2).abs(),
        "taylor-second": lambda n, w: fisher[n] * w ** 2,             # official param_second
        "l1": lambda n, w: w.abs(),
        "l2": lambda n, w: w ** 2,
    }[criterion]
    stats = member_statistics(model, calib, criterion, fams)
    for fam, st in zip(fams, stats):
        expected = hand_member_scores(model, fam, reference).float()
        # squares of small first-order terms: an absolute tolerance scaled to them, not 1e-7
        atol = 1e-7 if criterion != "taylor-squared" else 1e-6 * float(expected.abs().max())
        torch.testing.assert_close(st, expected, rtol=1e-4, atol=atol)


def test_aggregations_hand_example():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    expected = {"sum": [9, 12], "mean": [3, 4], "max": [5, 6], "prod": [math.log(15), math.log(48)],
                "first": [1, 2], "last": [5, 6]}
    assert set(expected) == set(AGGREGATIONS)
    for how, values in expected.items():
        assert aggregate(x, how).tolist() == pytest.approx(values)


def test_prod_stays_finite_and_ranks_like_the_product():
    # 272 members (9 x 30 layers + 2, like hidden channels of the default model): float32 products
    # of l1 scores ~50 overflow to inf, of Taylor scores ~1e-3 underflow to 0; the log keeps the order
    gen = torch.Generator().manual_seed(0)
    for scale in (50.0, 1e-3):
        x = scale * (0.5 + torch.rand(272, 6, generator=gen))
        assert not torch.isfinite(x.prod(0)).all() or (x.prod(0) == 0).all()
        got = aggregate(x, "prod")
        assert torch.isfinite(got).all()
        expected = x.double().log().sum(0)
        torch.testing.assert_close(got, expected)
        assert got.argsort().tolist() == expected.argsort().tolist()


def test_vector_rows_is_the_official_vectorize(model, calib):
    """sum over a member's rows (columns for o / down) of |sum of g*w along the row|."""
    fams = [attention_family(model, 0), mlp_family(model, 1)]
    grads = full_gradients(model, calib)
    params = dict(model.named_parameters())
    stats = member_statistics(model, calib, "taylor-vector-rows", fams)
    for fam, st in zip(fams, stats):
        for m, member in enumerate(fam.members):
            gw = grads[member.param] * params[member.param].detach()
            per_position = gw.sum(1 - member.dim).abs()
            for g in range(fam.n_groups):
                assert st[m, g].item() == pytest.approx(per_position[member.indices(g)].sum().item(),
                                                        rel=1e-4, abs=1e-8)


def test_last_is_o_and_down():
    model = tiny_model()
    assert attention_family(model, 0).members[-1].role == "o"
    assert mlp_family(model, 0).members[-1].role == "down"
    assert attention_family(model, 0).members[0].role == "q"


@pytest.mark.parametrize("criterion", ["l1", "taylor-element1", "taylor-vector"])
def test_gqa_query_head_lands_in_its_own_kv_group(calib, criterion):
    # 6 query heads, 3 KV heads: query heads (0,1)->kv 0, (2,3)->kv 1, (4,5)->kv 2.
    # LLM-Pruner folds q channels modulo the KV width, putting head 1 into kv group 1; it belongs to 0.
    model = tiny_model(n_heads=6, n_kv=3, hidden=48)
    attn = model.model.layers[1].self_attn
    with torch.no_grad():
        attn.q_proj.weight[8:16] *= 40.0
        attn.o_proj.weight[:, 8:16] *= 40.0
    df = score(model, calib, ScoreConfig(criterion=criterion, kinds=("attn",)))
    layer = df[df.layer == 1].set_index("group").score
    assert layer.idxmax() == 0


def test_micro_batches_match_one_batch(calib):
    model = tiny_model()
    fams = families(model)
    for criterion in ("taylor-vector", "taylor-element1"):
        whole = member_statistics(model, calib, criterion, fams)
        parts = member_statistics(model, calib, criterion, fams, batch_size=1)
        for a, b in zip(whole, parts):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_scoring_leaves_model_clean(model, calib):
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    score(model, calib, ScoreConfig(criterion="taylor-mix"))
    for n, p in model.named_parameters():
        assert p.grad is None
        assert p.requires_grad == flags[n]
        assert torch.equal(p, before[n])


def test_scores_frame_is_tidy(model, calib):
    df = score(model, calib, ScoreConfig(criterion="taylor-element2", aggregation="last",
                                         kinds=("attn", "mlp", "hidden")))
    assert list(df.columns) == COLUMNS
    assert df.layer.dtype.kind == "i" and df.group.dtype.kind == "i"
    n_kv = model.config.num_key_value_heads
    assert len(df[df.kind == "attn"]) == 3 * n_kv
    assert len(df[df.kind == "mlp"]) == 3 * 48
    assert len(df[df.kind == "hidden"]) == 32 and (df[df.kind == "hidden"].layer == -1).all()
    assert (df.score >= 0).all() and df.score.notna().all()
    assert set(df.criterion) == {"taylor-element2"} and set(df.aggregation) == {"last"}


def test_random_is_seeded(model, calib):
    a = score(model, None, ScoreConfig(criterion="random", seed=3))
    b = score(model, None, ScoreConfig(criterion="random", seed=3))
    c = score(model, None, ScoreConfig(criterion="random", seed=4))
    pd.testing.assert_frame_equal(a, b)
    assert not a.score.equals(c.score)


def test_float16_model_accumulates_fisher_in_float32(calib):
    # LLM-Pruner squares float16 gradients in float16, where g^2 * w^2 underflows to zero
    model = tiny_model(dtype=torch.float16)
    fams = [mlp_family(model, 0)]
    e1 = member_statistics(model, calib, "taylor-element1", fams)[0]
    second = member_statistics(model, calib, "taylor-second", fams)[0]
    assert e1.dtype == torch.float32 and torch.isfinite(second).all()
    assert (second > 0).all()
    up = model.model.layers[0].mlp.up_proj.weight
    g = full_gradients(model, calib[:1])["model.layers.0.mlp.up_proj.weight"]
    naive = (g * g / calib.shape[0]) * up.detach() * up.detach()     # float16 arithmetic
    assert naive.dtype == torch.float16 and (naive == 0).float().mean() > 0.5


def test_bad_config_is_rejected(model):
    with pytest.raises(ValueError, match="criterion"):
        score(model, None, ScoreConfig(criterion="taylor-magic"))
    with pytest.raises(ValueError, match="aggregation"):
        score(model, None, ScoreConfig(aggregation="median"))
    with pytest.raises(ValueError, match="calibration"):
        score(model, None, ScoreConfig(criterion="taylor-element1"))


def test_low_memory_mode_gives_the_same_scores(calib):
    model = tiny_model()
    fams = families(model)
    for criterion in ("taylor-vector", "taylor-element2"):
        fast = member_statistics(model, calib, criterion, fams, low_memory=False)
        lean = member_statistics(model, calib, criterion, fams, low_memory=True)
        for a, b in zip(fast, lean):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
    assert not hasattr(model.model.layers[0], "__dict__") or "forward" not in model.model.layers[0].__dict__


def test_float16_scoring_scales_the_loss_and_matches_float32(calib):
    """A float16 model (a GPU without native bfloat16) is scored with a scaled loss and its
    gradients unscaled in float32: the scores agree with the float32 model's."""
    fp32 = tiny_model()
    fp16 = tiny_model(dtype=torch.float16)
    fams32, fams16 = [mlp_family(fp32, 1)], [mlp_family(fp16, 1)]
    s32 = member_statistics(fp32, calib, "taylor-element1", fams32)[0]
    s16 = member_statistics(fp16, calib, "taylor-element1", fams16)[0]
    assert s16.dtype == torch.float32 and (s16 > 0).all()
    torch.testing.assert_close(s16, s32, rtol=0.05, atol=1e-5)


def test_native_bfloat16_only_from_ampere(monkeypatch):
    from pruner import models

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))    # a T4
    assert models.pick_dtype(torch.device("cuda")) == torch.float16
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))    # an H100
    assert models.pick_dtype(torch.device("cuda")) == torch.bfloat16


def test_the_criteria_registry_says_what_each_needs_and_computes_its_formula():
    from pruner.criteria import REGISTRY, criterion
    from pruner.importance import CALIBRATION_FREE, CRITERIA, FISHER_CRITERIA, GRADIENT_CRITERIA

    assert CRITERIA == tuple(REGISTRY) and all(REGISTRY[c].formula for c in CRITERIA)
    assert set(CALIBRATION_FREE) == {"random", "l1", "l2"}
    assert set(GRADIENT_CRITERIA) == {c for c in CRITERIA if c.startswith("taylor")}
    assert FISHER_CRITERIA == ("taylor-element2",)
    assert [c for c in CRITERIA if not REGISTRY[c].aggregates] == [
        "random", "fluctuation", "wanda-sp", "activation", "block-influence"]
    w = torch.tensor([[1.0, -2.0], [3.0, 0.5]])
    g = torch.tensor([[0.5, 1.0], [-1.0, 2.0]])
    f = torch.tensor([[2.0, 1.0], [0.0, 4.0]])
    # by hand: g*w = [[0.5, -2], [-3, 1]]; F*w^2 = [[2, 4], [0, 1]]
    assert criterion("l1").element(w).tolist() == [[1.0, 2.0], [3.0, 0.5]]
    assert criterion("l2").element(w).tolist() == [[1.0, 4.0], [9.0, 0.25]]
    assert criterion("taylor-element1").element(w, g).tolist() == [[0.5, 2.0], [3.0, 1.0]]
    assert criterion("taylor-squared").element(w, g).tolist() == [[0.25, 4.0], [9.0, 1.0]]
    assert criterion("taylor-element2").element(w, g, f).tolist() == [[0.5, 4.0], [3.0, 0.5]]
    assert criterion("taylor-second").element(w, fisher=f).tolist() == [[2.0, 4.0], [0.0, 1.0]]
    vector = criterion("taylor-vector")
    assert vector.finish([vector.element(w, g).sum(1)])[0].tolist() == [1.5, 2.0]    # |0.5-2|, |-3+1|
    with pytest.raises(ValueError, match="unknown criterion"):
        criterion("magic")


def test_scoring_reports_its_passes_as_real_fractions(model, calib):
    """taylor-element2 on 4 samples: 4 per-sample passes for the Fisher diagonal, then 1 gradient
    pass: the fractions rise to 1.0 and each pass's end is reported under its phase."""
    heard = []
    score(model, calib, ScoreConfig("taylor-element2", low_memory=False), progress=lambda f, what: heard.append((f, what)))
    fractions = [f for f, _ in heard]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    ends = [(round(f, 3), what) for f, what in heard if what.endswith(("of 5",)) and round(f * 5, 6).is_integer()]
    assert (0.2, "per-sample gradients for the Fisher diagonal: pass 1 of 5") in ends
    assert (1.0, "forward + backward on the calibration tokens: pass 5 of 5") in ends
    assert score(model, calib, ScoreConfig("l2"), progress=lambda f, what: heard.append(f)) is not None
