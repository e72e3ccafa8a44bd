"""Per-layer sensitivity probes equal the sliced model's loss, and the allocation they drive
matches a hand-solved water filling and keeps the pruning exact."""

import pytest
import torch
from conftest import tiny_model

from pruner.activations import input_statistics
from pruner.export import load_pruned, save
from pruner.importance import ScoreConfig, causal_lm_loss, score
from pruner.prune import Plan, PruneConfig, apply_plan, make_plan, prune_model
from pruner.sensitivity import allocate, layer_sensitivity
from pruner.stats import count_params


def loss(model, ids):
    with torch.no_grad():
        return float(causal_lm_loss(model, ids))


@pytest.mark.parametrize("compensate", [False, True, "refit"])
def test_probe_loss_equals_the_sliced_model(calib, compensate):
    model = tiny_model(n_heads=6, n_kv=2, hidden=48, layers=3)
    plan = Plan(attn_keep={0: [1]}, qhead_keep={1: [0, 2, 3, 5]}, mlp_keep={2: list(range(0, 48, 3))})
    refit = compensate == "refit"
    stats = input_statistics(model, calib) if compensate is True else None
    table = layer_sensitivity(model, calib, plan, stats, batch_size=3, refit=refit)
    assert list(zip(table.kind, table.layer)) == [("attn", 0), ("qhead", 1), ("mlp", 2)]
    assert table.removed.tolist() == [1, 2, 32]
    base = loss(model, calib)
    singles = [Plan(attn_keep=plan.attn_keep), Plan(qhead_keep=plan.qhead_keep), Plan(mlp_keep=plan.mlp_keep)]
    for row, single in zip(table.itertuples(), singles):
        sliced = loss(apply_plan(model, single, stats, refit_ids=calib if refit else None), calib)
        assert row.loss == pytest.approx(sliced, abs=1e-5)
        assert row.loss_increase == pytest.approx(sliced - base, abs=1e-5)
    assert loss(model, calib) == base               # hooks removed, model untouched
    capped = layer_sensitivity(model, calib, plan, stats, max_tokens=32, refit=refit)   # first 2 rows of 16
    assert capped.loss.tolist() == pytest.approx(
        layer_sensitivity(model, calib[:2], plan, stats, refit=refit).loss.tolist(), abs=1e-6)


def test_probes_reuse_the_dense_layers_before_them(calib):
    """Each probe runs the decoder only from its own layer on: per batch, one recording pass (4
    layer calls), one advance per layer up to the last probed one (3), the probes' tails
    (attn 1: 3, mlp 1: 3, mlp 2: 2, mlp 3: 1) and the base loss's last layer (1) = 17 calls,
    not a full forward per probe plus the base (5 x 4 = 20; bench/sensitivity_probes.py times it)."""
    model = tiny_model(n_heads=4, n_kv=2, layers=4)
    plan = Plan(attn_keep={1: [0]}, mlp_keep={1: list(range(40)), 2: list(range(30)), 3: list(range(20))})
    calls = []
    handles = [layer.register_forward_pre_hook(lambda m, a, i=i: calls.append(i))
               for i, layer in enumerate(model.model.layers)]
    try:
        table = layer_sensitivity(model, calib, plan, batch_size=3)          # 4 rows: 2 batches
    finally:
        for h in handles:
            h.remove()
    assert len(calls) == 2 * 17
    assert calls.count(0) == 2 * 2                   # layer 0: recorded and advanced, never probed
    base = loss(model, calib)
    for row in table.itertuples():
        single = Plan(attn_keep={row.layer: plan.attn_keep[row.layer]}) if row.kind == "attn" else \
            Plan(mlp_keep={row.layer: plan.mlp_keep[row.layer]})
        assert row.loss == pytest.approx(loss(apply_plan(model, single), calib), abs=1e-5)
        assert row.loss_increase == pytest.approx(row.loss - base, abs=1e-5)


def test_allocation_is_hand_solved_water_filling():
    import pandas as pd

    sens = pd.DataFrame({"kind": "mlp", "layer": [0, 1, 2], "loss_increase": [1.0, 2.0, 4.0]})
    sizes = {0: 10, 1: 10, 2: 10}
    # r_l = c / s_l with mean 0.35: c (1 + 1/2 + 1/4) = 1.05 -> c = 0.6, inside [0, 0.7]
    got = allocate(sens, "mlp", 0.35, sizes, spread=1.0)
    assert got == pytest.approx({0: 0.6, 1: 0.3, 2: 0.15}, abs=1e-9)
    # bounds 0.35 * (1 -/+ 0.5) = [0.175, 0.525]: layers 0 and 2 clip, layer 1 takes the rest
    got = allocate(sens, "mlp", 0.35, sizes, spread=0.5)
    assert got == pytest.approx({0: 0.525, 1: 0.35, 2: 0.175}, abs=1e-9)
    # a layer without a measurement gets the mean sensitivity; the total is kept
    got = allocate(sens, "mlp", 0.2, {0: 10, 1: 10, 2: 10, 3: 10}, spread=1.0)
    assert sum(got.values()) == pytest.approx(0.8) and got[3] == pytest.approx(got[0] * 3 / 7)
    # spread 0 and unmeasured kinds are uniform
    assert allocate(sens, "mlp", 0.2, sizes, spread=0.0) == {0: 0.2, 1: 0.2, 2: 0.2}
    assert allocate(sens, "attn", 0.2, sizes, spread=1.0) == {0: 0.2, 1: 0.2, 2: 0.2}


def test_layer_sizes_and_floored_sensitivity_by_hand():
    import pandas as pd

    from pruner.prune import layer_sizes
    from pruner.sensitivity import floored_sensitivity

    # layer 1 lost 2 of its 6 groups earlier (recorded count 6); layer 2 has no record; layer 3 none at all
    scores = pd.DataFrame({"kind": ["mlp"] * 7 + ["attn"], "layer": [1] * 4 + [2] * 3 + [3],
                           "group": [0, 1, 2, 3, 0, 1, 2, 0], "score": [1.0] * 8})
    assert layer_sizes(scores, "mlp", range(4), {("mlp", 1): 6}) == {1: 6, 2: 3}
    # the floor is 1% of the largest increase (5.0 -> 0.05); layer 3 unmeasured gets the mean (1.68)
    sens = pd.DataFrame({"kind": "mlp", "layer": [0, 1, 2], "loss_increase": [5.0, 0.01, 0.04]})
    assert floored_sensitivity(sens, "mlp", [0, 1, 2, 3]) == pytest.approx({0: 5.0, 1: 0.05, 2: 0.05, 3: 1.6833333})
    assert floored_sensitivity(sens, "attn", [0, 1]) == {}


def test_sensitivity_allocation_prunes_least_sensitive_layers_most(calib, tmp_path):
    model = tiny_model(n_heads=4, n_kv=2, layers=4, inter=96)
    cfg = PruneConfig(amount=0.2, attn_share=0.0, compensate=True, allocation="sensitivity",
                      mlp_layers=(0, 4), attn_layers=(0, 4))
    result = prune_model(model, calib, ScoreConfig("taylor-element1"), cfg)
    sens = result.sensitivity
    assert sens is not None and list(sens.layer) == [0, 1, 2, 3] and (sens.kind == "mlp").all()
    widths = result.widths_after.set_index("layer").intermediate_size
    order = sens.sort_values("loss_increase").layer.tolist()
    assert widths[order[0]] <= widths[order[-1]]
    kept = widths[[0, 1, 2, 3]]
    assert kept.nunique() > 1 and (kept <= 96).all() and (kept >= 96 * (1 - 1.5 * 0.3)).all()
    assert result.report["ratio_params_removed"] == pytest.approx(0.2, abs=0.02)
    from components.figures import widths_figure        # the dashboard draws the probes next to widths

    fig = widths_figure(result.widths_before, result.widths_after, sens)
    assert [t.name for t in fig.data][-1] == "mlp sensitivity"
    total = count_params(model)["params"]
    assert count_params(result.model)["params"] < total
    save(result.model, tmp_path)
    loaded, _ = load_pruned(tmp_path, device="cpu")
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=calib).logits, result.model(input_ids=calib).logits,
                                   rtol=0, atol=0)


def test_make_plan_uses_a_given_sensitivity(calib):
    import pandas as pd

    model = tiny_model(n_heads=4, n_kv=2, layers=3)
    scores = score(model, calib, ScoreConfig("l1"))
    cfg = PruneConfig(amount=0.3, unit="groups", prune_attn=False, allocation="sensitivity", mlp_layers=(0, 3))
    sens = pd.DataFrame({"kind": "mlp", "layer": [0, 1, 2], "loss_increase": [1.0, 1.0, 100.0]})
    plan = make_plan(model, scores, cfg, sensitivity=sens)
    kept = {layer: len(k) for layer, k in plan.mlp_keep.items()}
    assert kept[2] > kept[0] == kept[1]
    uniform = make_plan(model, scores, PruneConfig(amount=0.3, unit="groups", prune_attn=False, mlp_layers=(0, 3)))
    assert {len(k) for k in uniform.mlp_keep.values()} == {33}            # floor(48 * 0.7)
    with pytest.raises(ValueError, match="sensitivity allocation"):
        PruneConfig(allocation="sensitivity", scope="global").validate(3)
    with pytest.raises(ValueError, match="layer_spread"):
        PruneConfig(layer_spread=1.5).validate(3)
