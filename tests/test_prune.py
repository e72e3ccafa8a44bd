"""Planning and applying: ratios, scopes, ranges, strategies, iterative steps, originals untouched."""

import math
from dataclasses import replace

import pytest
import torch

from pruner.importance import ScoreConfig, score
from pruner.prune import (Plan, PruneConfig, apply_plan, default_layer_range, layer_widths,
                          make_plan, prune_model)
from pruner.stats import count_params

from conftest import tiny_model


def test_original_model_is_untouched(model, calib):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config_before = model.config.to_dict()
    result = prune_model(model, calib, ScoreConfig("taylor-element1"),
                         PruneConfig(amount=0.5, unit="groups", attn_layers=(0, 3), mlp_layers=(0, 3)))
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert model.config.to_dict() == config_before
    assert count_params(result.model)["params"] < count_params(model)["params"]


def test_local_ratio_keeps_floor_per_layer(calib):
    model = tiny_model(n_heads=8, n_kv=4, layers=4)
    cfg = PruneConfig(amount=0.3, unit="groups", attn_layers=(1, 3), mlp_layers=(0, 2))
    result = prune_model(model, calib, ScoreConfig("l2"), cfg)
    w = layer_widths(result.model)
    assert w.kv_heads.tolist() == [4, math.floor(4 * 0.7), math.floor(4 * 0.7), 4]
    assert w.heads.tolist() == [8, 4, 4, 8]          # two query heads leave with each KV head
    assert w.intermediate_size.tolist() == [math.floor(48 * 0.7)] * 2 + [48, 48]


def test_local_keeps_the_highest_scores(model, calib):
    scores = score(model, calib, ScoreConfig("taylor-element1"))
    plan = make_plan(model, scores, PruneConfig(amount=0.5, unit="groups", attn_layers=(0, 3), mlp_layers=(0, 3)))
    for layer, kept in plan.mlp_keep.items():
        sub = scores[(scores.kind == "mlp") & (scores.layer == layer)]
        assert sub[sub.group.isin(kept)].score.min() >= sub[~sub.group.isin(kept)].score.max()


def test_global_prunes_heads_and_keeps_one_per_layer(calib):
    model = tiny_model(n_heads=8, n_kv=8, layers=4)
    cfg = PruneConfig(amount=0.6, unit="groups", scope="global", attn_layers=(0, 4), mlp_layers=(0, 4))
    scores = score(model, calib, ScoreConfig("taylor-element1"))
    plan = make_plan(model, scores, cfg)
    kept_heads = sum(len(v) for v in plan.attn_keep.values())
    assert kept_heads == math.floor(32 * 0.4)
    assert all(len(v) >= 1 for v in plan.attn_keep.values())
    assert sum(len(v) for v in plan.mlp_keep.values()) == math.floor(4 * 48 * 0.4)
    attn = scores[scores.kind == "attn"]
    kept = attn.apply(lambda r: r.group in plan.attn_keep[r.layer], axis=1)
    # one ranking across layers: nothing removed outranks a kept group, except a layer's reserve
    best_per_layer = attn.groupby("layer").score.transform("max") == attn.score
    assert attn[kept & ~best_per_layer].score.min() >= attn[~kept].score.max()


def test_target_params_is_met(calib):
    model = tiny_model(n_heads=4, n_kv=2, layers=4, hidden=32, inter=96)
    cfg = PruneConfig(amount=0.2, attn_layers=(0, 4), mlp_layers=(0, 4))
    result = prune_model(model, calib, ScoreConfig("taylor-element1"), cfg)
    assert result.report["ratio_params_removed"] == pytest.approx(0.2, abs=0.01)
    assert result.report["params_after"] == count_params(result.model)["params"]
    assert result.report["macs_per_token_after"] < result.report["macs_per_token_before"]


def test_iterative_steps_reach_the_same_widths(calib):
    model = tiny_model(n_heads=4, n_kv=4, layers=3, inter=60)
    cfg = dict(amount=0.5, unit="groups", attn_layers=(0, 3), mlp_layers=(0, 3))
    one = prune_model(model, calib, ScoreConfig("taylor-element1"), PruneConfig(**cfg))
    three = prune_model(model, calib, ScoreConfig("taylor-element1"),
                        PruneConfig(iterative_steps=3, **cfg))
    assert len(three.plans) == 3 and three.group_ratios == pytest.approx([1 / 6, 2 / 6, 0.5])
    assert layer_widths(one.model).equals(layer_widths(three.model))


def test_iterative_target_params(calib):
    model = tiny_model(n_heads=4, n_kv=2, layers=4, inter=96)
    cfg = PruneConfig(amount=0.25, iterative_steps=2, attn_layers=(0, 4), mlp_layers=(0, 4))
    result = prune_model(model, calib, ScoreConfig("taylor-element2"), cfg)
    assert result.report["ratio_params_removed"] == pytest.approx(0.25, abs=0.01)


def test_layer_ranges_default_skip_first_three_last_two():
    assert default_layer_range(30) == (3, 28)
    assert default_layer_range(4) == (0, 4)


def test_mlp_only(calib):
    model = tiny_model()
    cfg = PruneConfig(amount=0.5, unit="groups", prune_attn=False, attn_layers=(0, 3), mlp_layers=(0, 3))
    w = layer_widths(prune_model(model, calib, ScoreConfig("l1"), cfg).model)
    assert (w.kv_heads == 2).all() and (w.intermediate_size == 24).all()


def test_channel_strategy(calib):
    model = tiny_model(n_heads=4, n_kv=2)
    result = prune_model(model, calib, ScoreConfig("taylor-element1"),
                         PruneConfig(amount=0.25, unit="groups", strategy="channel"))
    m = result.model
    assert m.config.hidden_size == 24 and m.config.hidden_size % m.config.num_attention_heads == 0
    assert m.model.embed_tokens.weight.shape == (96, 24)
    assert m(input_ids=calib).logits.shape == (4, 16, 96)


def test_layer_strategy_drops_least_important_layers(calib):
    model = tiny_model(layers=6)
    scores = score(model, calib, ScoreConfig("taylor-element1"))
    cfg = PruneConfig(amount=0.34, unit="groups", strategy="layer", attn_layers=(1, 5), mlp_layers=(1, 5))
    plan = make_plan(model, scores, cfg)
    per_layer = scores[scores.layer.between(1, 4)].groupby("layer").score.sum().sort_values()
    # one rounding rule for every strategy: keep floor(n * (1 - ratio)), i.e. removals round up:
    # 4 candidate layers at 0.34 keep floor(2.64) = 2, so 2 go (as 0.34 of 4 KV groups would)
    assert plan.drop_layers == sorted(per_layer.index[:2].tolist())
    pruned = apply_plan(model, plan)
    assert pruned.config.num_hidden_layers == 4 == len(pruned.model.layers)
    assert [l.self_attn.layer_idx for l in pruned.model.layers] == list(range(4))
    out = pruned.generate(calib[:1, :4], max_new_tokens=3, do_sample=False)
    assert out.shape == (1, 7)


def test_layer_strategy_iterative_and_target(calib):
    model = tiny_model(layers=8)
    cfg = PruneConfig(amount=0.5, unit="groups", strategy="layer", iterative_steps=2, attn_layers=(0, 8),
                      mlp_layers=(0, 8))
    result = prune_model(model, calib, ScoreConfig("l1"), cfg)
    assert result.model.config.num_hidden_layers == 4
    cfg = PruneConfig(amount=0.3, strategy="layer", attn_layers=(0, 8), mlp_layers=(0, 8))
    result = prune_model(model, calib, ScoreConfig("l1"), cfg)
    assert 0.15 < result.report["ratio_params_removed"] < 0.45


def test_removed_groups_marks_the_plan(model, calib):
    scores = score(model, calib, ScoreConfig("l2"))
    plan = make_plan(model, scores, PruneConfig(amount=0.5, unit="groups", attn_layers=(0, 3), mlp_layers=(1, 2)))
    gone = plan.removed_groups(scores)
    assert set(gone[gone.kind == "mlp"].layer) == {1}
    assert len(gone[gone.kind == "mlp"]) == 24


def test_top_groups_and_removed_rows_by_hand():
    """The kept groups are the highest scores, ties to the lower group id, unscored (NaN) last;
    the removed rows are exactly the named layers' groups not kept, of the plan's kinds only."""
    import pandas as pd

    from pruner.prune import _top

    sub = pd.DataFrame({"group": [0, 1, 2, 3, 4], "score": [1.0, 3.0, float("nan"), 3.0, 2.0]})
    assert _top(sub, 1) == [1] and _top(sub, 2) == [1, 3] and _top(sub, 3) == [1, 3, 4]
    assert _top(sub, 5) == [0, 1, 2, 3, 4]
    scores = pd.DataFrame({"layer": [0, 0, 0, 1, 1, 1, 0, 0], "kind": ["mlp"] * 6 + ["qhead"] * 2,
                           "group": [0, 1, 2, 0, 1, 2, 0, 1], "score": 1.0})
    gone = Plan(mlp_keep={0: [1], 1: [0, 1, 2]}, qhead_keep={0: [0]}).removed_groups(scores)
    assert list(gone.index) == [0, 2, 7]
    assert Plan(mlp_keep={1: [2]}).removed_groups(scores).index.tolist() == [3, 4]
    assert Plan().removed_groups(scores).empty


def test_a_plan_counts_applies_and_describes_its_cut(calib):
    model = tiny_model(n_heads=4, n_kv=2)
    scores = score(model, calib, ScoreConfig("l2"))
    plan = make_plan(model, scores, PruneConfig(amount=0.5, unit="groups", attn_layers=(0, 3), mlp_layers=(1, 2)))
    before = count_params(model)["params"]
    pruned = plan.apply(model)
    # the count without building a model equals the built model's loss of parameters
    assert plan.params_removed(model, scores) == before - count_params(pruned)["params"]
    # hand-computed: 3 layers keep 1 of 2 KV groups (2 of 4 query heads), layer 1 keeps 24 of 48 channels
    assert plan.summary(model).splitlines() == [
        "layer 0: keeps 1/2 KV groups", "layer 1: keeps 1/2 KV groups, 24/48 MLP channels",
        "layer 2: keeps 1/2 KV groups"]
    assert str(plan).startswith("layer 0: keeps 1 KV groups")
    assert Plan().summary() == "removes nothing"
    assert count_params(model)["params"] == before       # apply copies


@pytest.mark.parametrize("bad, match", [
    (dict(amount=1.0, unit="groups"), "amount"), (dict(amount=-0.1, unit="groups"), "amount"),
    (dict(amount=0.99), "amount must be in \\(0, 0.95\\) for a share of parameters"), (dict(unit="layers"), "unit"),
    (dict(strategy="magic"), "strategy"), (dict(scope="world"), "scope"),
    (dict(attn_layers=(2, 9)), "attn_layers"), (dict(iterative_steps=0), "iterative"),
])
def test_bad_prune_config(model, calib, bad, match):
    with pytest.raises(ValueError, match=match):
        prune_model(model, calib, ScoreConfig("l1"), PruneConfig(**bad))


def test_plan_cannot_empty_a_layer(model):
    with pytest.raises(ValueError, match="keeps no"):
        apply_plan(model, Plan(mlp_keep={0: []}))


def test_named_recipes_and_overrides():
    from pruner.recipes import recipe

    s, p = recipe("llm-pruner")
    assert (s.criterion, s.aggregation) == ("taylor-element1", "sum")
    assert p.attn_granularity == "kv-group" and p.attn_share is None and not p.compensate
    s, p = recipe("default", {"aggregation": None}, {"amount": 0.3, "unit": "groups"})
    assert s.aggregation == "last" and (p.amount, p.unit) == (0.3, "groups") and p.attn_share is None
    s, p = recipe("default", {"criterion": "l2"}, {"amount": 0.1})
    assert s.criterion == "l2" and (p.amount, p.unit) == (0.1, "parameters") and p.attn_share == 0.0 and p.compensate
    with pytest.raises(ValueError, match="recipe"):
        recipe("best-ever")


def test_a_saved_config_reads_back_including_the_old_amount_fields():
    from dataclasses import asdict

    config = PruneConfig(amount=0.3, unit="groups", attn_layers=(1, 3))
    assert PruneConfig.from_record(asdict(config) | {"attn_layers": [1, 3]}) == config
    old = asdict(PruneConfig()) | {"target_params": 0.25}
    del old["amount"], old["unit"]
    assert (PruneConfig.from_record(old).amount, PruneConfig.from_record(old).unit) == (0.25, "parameters")
    old = asdict(PruneConfig()) | {"ratio": 0.4, "target_params": None}
    del old["amount"], old["unit"]
    assert (PruneConfig.from_record(old).amount, PruneConfig.from_record(old).unit) == (0.4, "groups")


def test_round_to_keeps_mlp_widths_a_multiple(calib):
    model = tiny_model(layers=3)
    scores = score(model, calib, ScoreConfig("l1"))
    plan = make_plan(model, scores, PruneConfig(amount=0.3, unit="groups", round_to=8, prune_attn=False))
    # 48 channels at 0.3 keep floor(33.6) = 33, rounded down to 32
    assert {len(k) for k in plan.mlp_keep.values()} == {32}
    plan = make_plan(model, scores, PruneConfig(amount=0.95, unit="groups", round_to=16, prune_attn=False))
    assert {len(k) for k in plan.mlp_keep.values()} == {16}       # never below one multiple
    with pytest.raises(ValueError, match="round_to"):
        PruneConfig(round_to=0).validate(3)


def test_precomputed_scores_are_used_not_computed_again(monkeypatch, calib):
    """Prune after Score: the first step takes the given scores (same criterion, calibration) and
    the result is the one scoring inside prune_model gives."""
    from conftest import tiny_model
    from pruner import PruneConfig, ScoreConfig, prune_model, score
    from pruner import importance

    model = tiny_model(n_heads=4, n_kv=2, layers=3, inter=48)
    score_config = ScoreConfig("taylor-element1", "last")
    config = PruneConfig(amount=0.1, attn_share=0.0, attn_granularity="query-heads",
                         compensate=True)
    expected = prune_model(model, calib, score_config, config)
    given = score(model, calib, ScoreConfig("taylor-element1", "last", kinds=("attn", "mlp")))
    calls = []
    original_score = importance.score
    monkeypatch.setattr(importance, "score", lambda *a, **k: calls.append(1) or original_score(*a, **k))
    result = prune_model(model, calib, score_config, config, scores=given)
    assert calls == []
    assert result.widths_after.equals(expected.widths_after)
    with torch.no_grad():
        assert torch.equal(result.model(calib).logits, expected.model(calib).logits)


@pytest.mark.parametrize("extra", [{}, {"compensate": True, "refit": True, "probe_tokens": 32}])
def test_make_plan_measures_sensitivity_as_prune_model_does(calib, extra):
    model = tiny_model(layers=4)
    cfg = PruneConfig(amount=0.4, unit="groups", allocation="sensitivity", layer_spread=0.5, attn_layers=(0, 4),
                      mlp_layers=(0, 4), **extra)
    scores = score(model, calib, ScoreConfig("l2"))
    plan = make_plan(model, scores, cfg, input_ids=calib)
    assert plan == prune_model(model, calib, ScoreConfig("l2"), cfg, scores=scores).plans[0]
    assert plan != make_plan(model, scores, cfg)         # the measured split differs from the uniform one


def test_depth_ratios_fall_linearly_and_keep_the_total_by_hand():
    from pruner.prune import depth_ratios

    assert depth_ratios({3: 10, 4: 10, 5: 10}, 0.3, 0.5) == pytest.approx({3: 0.45, 4: 0.3, 5: 0.15})
    # unequal layers: weights 1.5 and 0.5, scaled by 0.2 x 40 / (15 + 15) so that 8 groups still go
    assert depth_ratios({0: 10, 2: 30}, 0.2, 0.5) == pytest.approx({0: 0.4, 2: 0.4 / 3})
    assert depth_ratios({0: 10, 1: 10}, 0.8, 0.5) == pytest.approx({0: 0.95, 1: 0.4})   # capped per layer
    assert depth_ratios({7: 12}, 0.25, 0.5) == {7: 0.25}                                  # one layer: its ratio
    assert depth_ratios({}, 0.25, 0.5) == {}
    assert depth_ratios({0: 10, 1: 10, 2: 10}, 0.3, 0.0) == pytest.approx({0: 0.3, 1: 0.3, 2: 0.3})
    # a score shape multiplies the ramp's weights: flat ramp, weights 2 and 1, scale 0.3 x 20 / 30
    assert depth_ratios({0: 10, 1: 10}, 0.3, 0.0, {0: 2.0, 1: 1.0}) == pytest.approx({0: 0.4, 1: 0.2})
    # ramp 1.5 / 0.5 times shape 1 / 3: weights 1.5 and 1.5, so one ratio
    assert depth_ratios({0: 10, 1: 10}, 0.3, 0.5, {0: 1.0, 1: 3.0}) == pytest.approx({0: 0.3, 1: 0.3})


def test_score_shape_by_hand():
    import pandas as pd

    from pruner.prune import score_shape

    # medians 1, 4 and 16 (the outliers 100 and 0.01 do not move a median); geometric mean 4
    scores = pd.DataFrame({"layer": [3, 3, 3, 4, 4, 4, 5, 5, 5, 6], "kind": ["mlp"] * 9 + ["qhead"],
                           "score": [1, 0.01, 2, 4, 3, 100, 16, 15, 17, 1e-6]})
    assert score_shape(scores, "mlp", [3, 4, 5], 1.0) == pytest.approx({3: 4.0, 4: 1.0, 5: 0.25})
    assert score_shape(scores, "mlp", [3, 4, 5], 0.5) == pytest.approx({3: 2.0, 4: 1.0, 5: 0.5})
    assert score_shape(scores, "mlp", [3, 4], 1.0) == pytest.approx({3: 2.0, 4: 0.5})    # only the pruned layers
    assert score_shape(scores, "mlp", [3, 4, 5], 0.0) == {}
    assert score_shape(scores, "mlp", [4], 1.0) == {}                                   # one layer: no shape
    zero = scores.assign(score=[0.0] * 10)
    assert score_shape(zero, "mlp", [3, 4, 5], 1.0) == {}                               # no scale to compare
    # another quantile of each layer's scores (bench/default_lever.py --shape-quantile): the maxima 2, 100
    # and 17, geometric mean 3400 ** (1/3); the median's quantile gives the median's shape
    top = 3400 ** (1 / 3)
    assert score_shape(scores, "mlp", [3, 4, 5], 1.0, quantile=1.0) == pytest.approx({3: top / 2, 4: top / 100,
                                                                                      5: top / 17})
    assert score_shape(scores, "mlp", [3, 4, 5], 1.0, quantile=0.5) == pytest.approx({3: 4.0, 4: 1.0, 5: 0.25})


def test_depth_allocation_cuts_early_layers_deeper_for_the_same_target(calib):
    model = tiny_model(layers=4, inter=48)
    scores = score(model, calib, ScoreConfig("l2"))
    uniform = PruneConfig(amount=0.25, unit="groups", prune_attn=False, mlp_layers=(0, 4))
    depth = PruneConfig(amount=0.25, unit="groups", prune_attn=False, mlp_layers=(0, 4), allocation="depth",
                        layer_spread=0.5, score_shape=0.0)
    # 48 channels a layer; ratios 0.375, 0.29, 0.21, 0.125 of them: 18, 14, 10, 6 removed (48 in all, as uniform)
    assert {k: 48 - len(v) for k, v in make_plan(model, scores, uniform).mlp_keep.items()} == dict.fromkeys(range(4), 12)
    removed = {k: 48 - len(v) for k, v in make_plan(model, scores, depth).mlp_keep.items()}
    assert removed == {0: 18, 1: 14, 2: 10, 3: 6}
    # shaped by the layers' median scores too: the plan takes depth_ratios' ratios with score_shape's weights
    from pruner.prune import depth_ratios, score_shape

    shape = score_shape(scores, "mlp", range(4), 2.0)
    assert len(shape) == 4 and max(shape.values()) / min(shape.values()) > 1.05
    ratios = depth_ratios(dict.fromkeys(range(4), 48), 0.25, 0.5, shape)
    shaped = {k: 48 - len(v) for k, v in make_plan(model, scores, replace(depth, score_shape=2.0)).mlp_keep.items()}
    assert shaped == {k: 48 - math.floor(48 * (1 - r) + 1e-9) for k, r in ratios.items()}
    with pytest.raises(ValueError, match="depth allocation"):
        PruneConfig(allocation="depth", scope="global").validate(4)


def test_an_amount_the_groups_cannot_hold_is_refused_before_scoring(monkeypatch):
    """2 layers, hidden 32, vocabulary 96: MLPs 2 x 3 x 64 x 32 = 12,288, attention 2 x (2 x 32 x 32 +
    2 x 16 x 32) = 6,144, embeddings and head 2 x 96 x 32 = 6,144, norms 5 x 32: 24,736 in all."""
    import pruner.importance
    from pruner.prune import prune_model, unreachable

    model = tiny_model(vocab=96, n_heads=4, n_kv=2, layers=2, inter=64)
    assert sum(p.numel() for p in model.parameters()) == 24_736
    mlp_only = PruneConfig(amount=0.5, unit="parameters", attn_share=0.0, attn_layers=(0, 2), mlp_layers=(0, 2))
    why = unreachable(model, mlp_only)                     # 12,288 / 24,736 = 49.68%
    assert why.startswith("50% of all parameters cannot be removed") and "MLP channels" in why
    assert "can give at most 49.7% of them" in why and "--hidden-share" in why
    assert unreachable(model, replace(mlp_only, amount=0.49)) is None
    # with attention: 18,432 / 24,736 = 74.51%
    assert unreachable(model, replace(mlp_only, attn_share=None)) is None
    assert "at most 74.5%" in unreachable(model, replace(mlp_only, attn_share=None, amount=0.75))
    # attention giving 30%: min(49.68% / 0.7, 24.84% / 0.3) = 70.97%
    split = unreachable(model, replace(mlp_only, attn_share=0.3, amount=0.72))
    assert "attention giving 30%, can give at most 71.0%" in split
    assert unreachable(model, replace(mlp_only, attn_share=0.3, amount=0.7)) is None
    # MLP layer 1 only: 6,144 / 24,736 = 24.84%
    assert "at most 24.8%" in unreachable(model, replace(mlp_only, amount=0.25, mlp_layers=(1, 2)))
    # a fraction of groups, or a hidden channels' share (an estimated ceiling), is left to the planner
    assert unreachable(model, replace(mlp_only, unit="groups", amount=0.9, attn_share=None)) is None
    assert unreachable(model, replace(mlp_only, hidden_share=0.5)) is None
    # a config invalid for this model is refused as such, first
    with pytest.raises(ValueError, match="outside the model"):
        unreachable(model, replace(mlp_only, mlp_layers=(0, 3)))

    def no_scoring(*args, **kwargs):
        raise AssertionError("scored an unreachable amount")

    monkeypatch.setattr(pruner.importance, "score", no_scoring)
    with pytest.raises(ValueError, match="cannot be removed"):
        prune_model(model, torch.zeros(1, 8, dtype=torch.long), ScoreConfig(criterion="l2"), mlp_only)
