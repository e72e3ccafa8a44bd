"""Issue-5 levers keep the exactness guarantees: query-head groups, attention/MLP budget split,
FLAP fluctuation, and bias compensation checked against a hand computation."""

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM

from pruner.activations import input_statistics
from pruner.export import load_pruned, save
from pruner.groups import query_head_family
from pruner.importance import ScoreConfig, score
from pruner.prune import Plan, PruneConfig, apply_plan, layer_widths, make_plan, prune_model
from pruner.stats import count_params

from conftest import tiny_model


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_query_head_removal_equals_zeroing(calib):
    model = tiny_model(n_heads=6, n_kv=2, hidden=48)
    fam = query_head_family(model, 1)
    kept = [0, 2, 3, 5]                 # one head out of each KV group of three
    zeroed = copy.deepcopy(model)
    params = dict(zeroed.named_parameters())
    with torch.no_grad():
        for g in (1, 4):
            for name, dim, idx in fam.group(g):
                params[name].index_fill_(dim, idx, 0.0)
    pruned = apply_plan(model, Plan(qhead_keep={1: kept}))
    torch.testing.assert_close(logits(pruned, calib), logits(zeroed, calib), atol=1e-5, rtol=1e-5)
    assert pruned.model.layers[1].self_attn.num_key_value_groups == 2
    with pytest.raises(ValueError, match="uniform"):
        apply_plan(model, Plan(qhead_keep={1: [0, 1, 2, 3]}))


def test_query_heads_plan_is_uniform_and_loads_plainly(calib, tmp_path):
    model = tiny_model(n_heads=8, n_kv=2, layers=3)
    cfg = PruneConfig(amount=0.5, unit="groups", attn_granularity="query-heads", prune_mlp=False,
                      attn_layers=(0, 3), mlp_layers=(0, 3))
    result = prune_model(model, calib, ScoreConfig("taylor-element1"), cfg)
    w = layer_widths(result.model)
    assert (w.heads == 4).all() and (w.kv_heads == 2).all()
    save(result.model, tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert reloaded.config.num_attention_heads == 4 and reloaded.config.num_key_value_heads == 2
    torch.testing.assert_close(logits(reloaded, calib), logits(result.model, calib), rtol=0, atol=0)


def test_attention_share_splits_the_budget(calib):
    model = tiny_model(n_heads=8, n_kv=4, layers=4, inter=96)
    total = count_params(model)["params"]
    for share in (0.0, 0.5):
        cfg = PruneConfig(amount=0.2, attn_share=share, attn_layers=(0, 4), mlp_layers=(0, 4))
        scores = score(model, calib, ScoreConfig("l1"))
        plan = make_plan(model, scores, cfg)
        gone = plan.removed_groups(scores)
        attn_removed = gone[gone.kind == "attn"].n_params.sum()
        assert gone.n_params.sum() == pytest.approx(0.2 * total, rel=0.08)
        if share == 0.0:
            assert attn_removed == 0 and not plan.attn_keep
        else:
            assert attn_removed == pytest.approx(0.5 * 0.2 * total, rel=0.3)



def test_attention_share_too_fine_for_its_groups_leaves_the_rest_to_the_mlps(calib):
    # one KV group of this model is ~6% of the parameters: a 5% attention share of a 20% budget
    # (1%) rounds to no group at all; the MLPs then owe the whole budget (it once removed 19% only)
    model = tiny_model(n_heads=8, n_kv=2, layers=4, inter=96)
    total = count_params(model)["params"]
    scores = score(model, calib, ScoreConfig("l1"))
    plan = make_plan(model, scores, PruneConfig(amount=0.2, attn_share=0.05, attn_layers=(0, 4),
                                                mlp_layers=(0, 4)))
    gone = plan.removed_groups(scores)
    assert (gone.kind == "mlp").all()
    assert gone.n_params.sum() == pytest.approx(0.2 * total, rel=0.03)
    only_attn = make_plan(model, scores, PruneConfig(amount=0.1, attn_share=1.0, attn_layers=(0, 4),
                                                     mlp_layers=(0, 4)))
    assert set(only_attn.removed_groups(scores).kind) == {"attn"} and not only_attn.mlp_keep


def test_prune_says_when_attention_could_not_take_its_share(calib):
    # the same 5% share: attention gives nothing, the result says so (0%, not 5%; not "-0%" for the
    # o_proj biases compensation adds) and counts it
    model = tiny_model(n_heads=8, n_kv=2, layers=4, inter=96)
    config = PruneConfig(amount=0.2, attn_share=0.05, attn_layers=(0, 4), mlp_layers=(0, 4), compensate=True)
    result = prune_model(model, calib, ScoreConfig("l1"), config)
    assert result.widths_after.heads.equals(result.widths_before.heads)             # no head removed
    assert result.widths_after.kv_heads.equals(result.widths_before.kv_heads)
    assert result.report["attn_params_removed"] < 0                  # compensation's biases only: added
    assert len(result.notes) == 1 and "is 0%, not the 5% asked" in result.notes[0]
    # half the budget: one KV group of two in every layer is the nearest plan, 79% of what goes
    def share(asked):
        return prune_model(model, calib, ScoreConfig("l1"), PruneConfig(amount=0.2, attn_share=asked,
                                                                        attn_layers=(0, 4), mlp_layers=(0, 4)))
    half = share(0.5)
    removed = half.report["params_before"] - half.report["params_after"]
    assert half.report["attn_params_removed"] / removed == pytest.approx(0.792, abs=0.001)
    assert half.notes == ["attention's share of the removed parameters is 79%, not the 50% asked: its groups "
                          "are too coarse for that budget, so the nearest plan gives that and the MLPs remove "
                          "the rest"]
    assert share(0.8).notes == []                          # that plan is within 2 points of 80%: no note
    assert prune_model(model, calib, ScoreConfig("l1"), PruneConfig(amount=0.2)).notes == []   # no share asked


def test_fluctuation_matches_hand_formula(calib):
    model = tiny_model()
    df = score(model, calib, ScoreConfig("fluctuation"))
    layer = 1
    mlp = model.model.layers[layer].mlp
    captured = []
    handle = mlp.down_proj.register_forward_pre_hook(lambda m, a: captured.append(a[0].reshape(-1, a[0].shape[-1])))
    with torch.no_grad():
        model(input_ids=calib)
    handle.remove()
    x = torch.cat(captured).double()
    expected = x.var(0, unbiased=False) * mlp.down_proj.weight.double().square().sum(0)
    got = df[(df.kind == "mlp") & (df.layer == layer)].sort_values("group").score.to_numpy()
    torch.testing.assert_close(torch.tensor(got), expected, rtol=1e-4, atol=1e-9)
    attn = df[(df.kind == "attn") & (df.layer == layer)]
    assert len(attn) == 2 and (attn.score > 0).all()


def test_bias_compensation_matches_hand_computation(calib):
    model = tiny_model()
    stats = input_statistics(model, calib)
    kept = list(range(0, 48, 2))
    removed = [c for c in range(48) if c not in kept]
    pruned = apply_plan(model, Plan(mlp_keep={1: kept}), stats)
    down = model.model.layers[1].mlp.down_proj.weight.double()
    captured = []
    handle = model.model.layers[1].mlp.down_proj.register_forward_pre_hook(
        lambda m, a: captured.append(a[0].reshape(-1, a[0].shape[-1])))
    with torch.no_grad():
        model(input_ids=calib)
    handle.remove()
    mean = torch.cat(captured).double().mean(0)
    expected_bias = down[:, removed] @ mean[removed]
    torch.testing.assert_close(pruned.model.layers[1].mlp.down_proj.bias.double(), expected_bias,
                               rtol=1e-5, atol=1e-6)
    # every MLP projection got a (zero) bias so the plain Llama config describes the model
    assert pruned.config.mlp_bias and pruned.model.layers[0].mlp.gate_proj.bias.abs().sum() == 0
    # the pruned layer's mean output on the calibration tokens is the dense layer's
    out_pruned, out_dense = [], []
    h1 = pruned.model.layers[1].mlp.register_forward_hook(lambda m, a, o: out_pruned.append(o))
    h2 = model.model.layers[1].mlp.register_forward_hook(lambda m, a, o: out_dense.append(o))
    with torch.no_grad():
        pruned(input_ids=calib)
        model(input_ids=calib)
    h1.remove()
    h2.remove()
    torch.testing.assert_close(out_pruned[0].double().mean((0, 1)), out_dense[0].double().mean((0, 1)),
                               rtol=1e-4, atol=1e-5)


def test_compensated_exports_round_trip(calib, tmp_path):
    model = tiny_model(n_heads=4, n_kv=2)
    cfg = PruneConfig(amount=0.5, unit="groups", compensate=True, attn_layers=(1, 3), mlp_layers=(0, 2))
    result = prune_model(model, calib, ScoreConfig("taylor-element1"), cfg)
    assert result.model.config.attention_bias and result.model.config.mlp_bias
    save(result.model, tmp_path)
    loaded, _ = load_pruned(tmp_path, device="cpu")
    torch.testing.assert_close(logits(loaded, calib), logits(result.model, calib), rtol=0, atol=0)
    uniform = prune_model(model, calib, ScoreConfig("l2"),
                          PruneConfig(amount=0.5, unit="groups", compensate=True, prune_attn=False,
                                      attn_layers=(0, 3), mlp_layers=(0, 3))).model
    save(uniform, tmp_path / "u")
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "u")
    torch.testing.assert_close(logits(plain, calib), logits(uniform, calib), rtol=0, atol=0)


def test_lever_validation(model, calib):
    with pytest.raises(ValueError, match="attn_share"):
        prune_model(model, calib, ScoreConfig("l1"), PruneConfig(amount=0.2, unit="groups", attn_share=0.5))
    with pytest.raises(ValueError, match="granularity"):
        prune_model(model, calib, ScoreConfig("l1"), PruneConfig(attn_granularity="rows"))


def test_recomputed_compensation_means_follow_the_partly_pruned_model(calib):
    model = tiny_model(layers=3)
    kept0, kept1 = list(range(0, 48, 2)), list(range(0, 48, 3))
    removed1 = [c for c in range(48) if c not in kept1]
    plan = Plan(mlp_keep={0: kept0, 1: kept1})
    recomputed = apply_plan(model, plan, recompute_ids=calib)
    dense_means = apply_plan(model, plan, input_statistics(model, calib))
    # layer 0 is cut first: its means are the dense model's
    torch.testing.assert_close(recomputed.model.layers[0].mlp.down_proj.bias,
                               dense_means.model.layers[0].mlp.down_proj.bias)
    # layer 1's means come from the model whose layer 0 is already pruned and compensated
    first = apply_plan(model, Plan(mlp_keep={0: kept0}), input_statistics(model, calib))
    mean1 = input_statistics(first, calib)[(1, "mlp")].mean
    w1 = model.model.layers[1].mlp.down_proj.weight.double()
    expected = w1[:, removed1] @ mean1[removed1]
    got = recomputed.model.layers[1].mlp.down_proj.bias.double()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(got, dense_means.model.layers[1].mlp.down_proj.bias.double(), atol=1e-6)
    result = prune_model(model, calib, ScoreConfig("taylor-element1"),
                         PruneConfig(amount=0.5, unit="groups", compensate=True, recompute_means=True, prune_attn=False,
                                     mlp_layers=(0, 3)))
    assert result.model.config.mlp_bias
    with pytest.raises(ValueError, match="recompute_means"):
        PruneConfig(recompute_means=True).validate(3)
