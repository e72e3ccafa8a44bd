"""The field's methods as recipes of this engine: each new metric against a hand computation on a
tiny model, the standardized allocation (FLAP) against its definition, and every recipe on every
supported family."""

import pytest
import torch

from pruner.importance import ScoreConfig, block_influence, score

from conftest import tiny_model


def _inputs_of(module, model, calib):
    captured = []
    handle = module.register_forward_pre_hook(lambda m, a: captured.append(a[0].reshape(-1, a[0].shape[-1])))
    with torch.no_grad():
        model(input_ids=calib)
    handle.remove()
    return torch.cat(captured).double()                       # (tokens, in)


def test_wanda_sp_and_activation_match_hand_formulas(calib):
    model = tiny_model(n_heads=4, n_kv=2)              # head_dim 8: a KV group owns 16 o_proj columns
    layer = 1
    down = model.model.layers[layer].mlp.down_proj
    x = _inputs_of(down, model, calib)
    rms = x.square().mean(0).sqrt()
    wanda = score(model, calib, ScoreConfig("wanda-sp"))
    got = wanda[(wanda.kind == "mlp") & (wanda.layer == layer)].sort_values("group").score.to_numpy()
    torch.testing.assert_close(torch.tensor(got), down.weight.double().abs().mean(0) * rms, rtol=1e-4, atol=1e-9)
    act = score(model, calib, ScoreConfig("activation"))
    got = act[(act.kind == "mlp") & (act.layer == layer)].sort_values("group").score.to_numpy()
    torch.testing.assert_close(torch.tensor(got), rms, rtol=1e-4, atol=1e-9)
    # a KV group's activation: the norm over its 2 heads x 8 channels of o_proj's input
    o = model.model.layers[layer].self_attn.o_proj
    xo = _inputs_of(o, model, calib)
    expected = xo.square().mean(0).reshape(2, 16).sum(1).sqrt()
    got = act[(act.kind == "attn") & (act.layer == layer)].sort_values("group").score.to_numpy()
    torch.testing.assert_close(torch.tensor(got), expected, rtol=1e-4, atol=1e-9)
    assert act.z.notna().all() and wanda.z.notna().all()      # FLAP's standardized mean stays usable


def test_activation_scores_a_hidden_channel_by_the_residual_stream_linears_read(calib):
    model = tiny_model(n_heads=4, n_kv=2)
    reads = [_inputs_of(layer.self_attn.q_proj, model, calib) for layer in model.model.layers]
    reads += [_inputs_of(layer.mlp.gate_proj, model, calib) for layer in model.model.layers]
    reads.append(_inputs_of(model.lm_head, model, calib))            # the final norm's output
    # by hand: sqrt of the sum over the 3 + 3 + 1 reading points of each channel's E[x^2]
    expected = torch.stack([x.square().mean(0) for x in reads]).sum(0).sqrt()
    act = score(model, calib, ScoreConfig("activation", kinds=("hidden", "mlp")))
    got = act[act.kind == "hidden"].sort_values("group").score.to_numpy()
    torch.testing.assert_close(torch.tensor(got), expected, rtol=1e-4, atol=1e-9)
    assert set(act[act.kind == "hidden"].layer) == {-1} and (act.kind == "mlp").sum() == 3 * 48
    with pytest.raises(ValueError, match="not hidden channels"):
        score(model, calib, ScoreConfig("fluctuation", kinds=("hidden",)))


def test_hidden_share_removes_its_share_as_hidden_channels_first_then_the_mlps(calib):
    from dataclasses import replace

    from pruner.prune import PruneConfig, make_plan, prune_model
    from pruner.recipes import recipe
    from pruner.stats import count_params

    model = tiny_model(n_heads=4, n_kv=2, layers=4, hidden=64, inter=96)
    total = count_params(model)["params"]
    score_config, config = recipe("minitron", prune_overrides={"amount": 0.3})
    config.attn_layers = config.mlp_layers = (0, 4)
    assert config.hidden_share == 0.5 and config.attn_share == 0.0
    hidden_scores = score(model, calib, ScoreConfig("activation", kinds=("hidden",)))
    result = prune_model(model, calib, score_config, config)
    pruned = result.model
    hidden_size = pruned.config.hidden_size
    # hidden channels go 4 at a time (the head count), each with its embedding, norm and q/k/v/o and
    # gate/up/down weights in all 4 layers: a step of 4 is 6% of all parameters, so the hidden stage
    # lands within half a step (3%) of its 15%
    removed = result.report["params_before"] - result.report["params_after"]
    assert result.report["params_before"] == total
    assert abs(removed - 0.3 * total) < 0.02 * total
    assert abs(result.report["hidden_params_removed"] - 0.15 * total) < 0.05 * total
    assert hidden_size < 64 and hidden_size % 4 == 0
    kept = hidden_scores.sort_values("score", ascending=False).group.head(hidden_size)
    assert sorted(result.plans[0].hidden_keep) == sorted(kept.tolist())     # the top channels by activation
    widths = result.widths_after
    assert (widths.heads == 4).all() and (widths.intermediate_size < 96).all()   # heads kept, MLPs cut
    assert list(result.widths_before.intermediate_size) == [96] * 4
    with torch.no_grad():
        assert torch.isfinite(pruned(input_ids=calib).logits).all()
    assert model.config.hidden_size == 64 and model.model.embed_tokens.weight.shape == (96, 64)  # untouched
    # the Preview's plan: the same hidden channels, MLP channels for the rest
    both = score(model, calib, ScoreConfig("activation", kinds=("mlp", "hidden")))
    plan = make_plan(model, both, config)
    assert sorted(plan.hidden_keep) == sorted(kept.tolist()) and plan.mlp_keep
    # whatever the recipe's criterion, hidden channels are ranked by activation (Taylor-last would read
    # only the final norm's weights); the MLPs then by the recipe's own criterion
    taylor = prune_model(model, calib, ScoreConfig("taylor-element1", "last"), config)
    assert sorted(taylor.plans[0].hidden_keep) == sorted(kept.tolist())
    assert set(taylor.scores.criterion) == {"activation", "taylor-element1"}
    mlp_only = score(model, calib, ScoreConfig("taylor-element1", "last", kinds=("mlp",)))
    assert sorted(make_plan(model, mlp_only, config, input_ids=calib).hidden_keep) == sorted(kept.tolist())
    with pytest.raises(ValueError, match="calibration tokens"):
        make_plan(model, mlp_only, config)
    # hidden channels go 4 at a time here (6% of the parameters): 95% of a 5% budget rounds to one step
    # of them, more than the whole budget, and the result says so instead of hiding it
    coarse = prune_model(model, calib, score_config, replace(config, amount=0.05, hidden_share=0.95))
    assert coarse.model.config.hidden_size == 60 and "more than the 5% asked" in coarse.notes[0]
    with pytest.raises(ValueError, match="hidden_share"):
        PruneConfig(amount=0.3, unit="groups", hidden_share=0.5).validate(4)
    normal, notes = PruneConfig(strategy="channel", hidden_share=0.5).normalized(model)
    assert normal.hidden_share == 0.0 and "hidden channels' share" in notes[0]


def test_block_influence_is_one_minus_the_mean_cosine_of_each_layer(calib):
    model = tiny_model(layers=3)
    states = []
    hooks = [layer.register_forward_hook(lambda m, a, kw, out: states.append(
        (a[0] if a else kw["hidden_states"], out[0] if isinstance(out, tuple) else out)), with_kwargs=True)
        for layer in model.model.layers]
    with torch.no_grad():
        model(input_ids=calib)
    for h in hooks:
        h.remove()
    expected = [1 - torch.nn.functional.cosine_similarity(i.double(), o.double(), dim=-1).mean().item()
                for i, o in states]
    assert block_influence(model, calib) == pytest.approx(expected, rel=1e-5)
    df = score(model, calib, ScoreConfig("block-influence"))
    per_layer = df.groupby("layer").score.sum().to_list()       # spread over the groups, summed back
    assert per_layer == pytest.approx(expected, rel=1e-5)


def test_standardized_allocation_is_one_ranking_of_standardized_scores():
    import pandas as pd

    from pruner.prune import standardized, standardized_removals

    # layer 0 MLP scores 1..4, layer 1 MLP 10..40 (same shape, 10x larger), layer 1 attention 5, 7
    pool = pd.DataFrame({"layer": [0] * 4 + [1] * 4 + [1] * 2, "kind": ["mlp"] * 8 + ["attn"] * 2,
                         "group": [0, 1, 2, 3, 0, 1, 2, 3, 0, 1],
                         "score": [1.0, 2, 3, 4, 10, 20, 30, 40, 5, 7]})
    z = standardized(pool)
    # by hand: (x - mean) / std with the sample std; both MLPs standardize to the same values
    assert z.iloc[:4].round(6).tolist() == z.iloc[4:8].round(6).tolist() == [-1.161895, -0.387298, 0.387298, 1.161895]
    assert z.iloc[8:].round(6).tolist() == [-0.707107, 0.707107]
    # removing 3 of 10: the two lowest MLP channels' z (-1.16 in both layers), then attention's -0.71
    assert standardized_removals(pool, 0.3) == {("mlp", 0): 1, ("mlp", 1): 1, ("attn", 1): 1}
    # removing 9: every (layer, kind) keeps one group
    assert standardized_removals(pool, 0.9) == {("mlp", 0): 3, ("mlp", 1): 3, ("attn", 1): 1}


@pytest.mark.parametrize("name", ["flap", "wanda-sp", "minitron", "shortgpt"])
def test_each_method_recipe_prunes_every_supported_family(name):
    from families import FAMILIES, tiny_family_model
    from pruner.prune import prune_model
    from pruner.recipes import recipe
    from pruner.stats import count_params

    for family in FAMILIES:
        model = tiny_family_model(family, num_hidden_layers=6)
        ids = torch.randint(3, model.config.vocab_size, (4, 16), generator=torch.Generator().manual_seed(0))
        score_config, prune_config = recipe(name, prune_overrides={"amount": 0.1})
        prune_config, _ = prune_config.normalized(model)
        before = count_params(model)["params"]
        result = prune_model(model, ids, score_config, prune_config)
        after = count_params(result.model)["params"]
        assert after < before, family
        with torch.no_grad():
            assert torch.isfinite(result.model(input_ids=ids).logits).all(), family


def test_the_methods_table_reports_mean_range_and_what_could_not_run():
    import sys
    from argparse import Namespace
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
    from methods import table

    runs = [{"method": "flap", "amount": 0.2, "seed": 0, "ratio": 1.5},
            {"method": "flap", "amount": 0.2, "seed": 1, "ratio": 1.7},
            {"method": "default", "amount": 0.5, "seed": 0, "error": "cannot remove"}]
    args = Namespace(recover=False, windows=8, draws=2, calib_samples=4, calib_len=16)
    text = table(runs, ["flap", "default"], [0.2, 0.5], args, 20.0)
    assert "| `flap` | 1.60x (1.50-1.70) | not run |" in text
    assert "| `default` | not run | cannot reach |" in text


def test_the_methods_results_render_again_from_their_runs(tmp_path):
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
    from methods import render

    runs = [{"method": "flap", "amount": 0.2, "seed": s, "ratio": r, "ratio_quick": q}
            for s, r, q in ((0, 3.0, 2.0), (1, 5.0, 2.5))]
    runs.append({"method": "default", "amount": 0.5, "seed": 0, "error": "cannot remove"})
    args = {"draws": 2, "calib_samples": 32, "calib_len": 128, "windows": 256, "recover": True}
    out = tmp_path / "grid.json"
    out.write_text(json.dumps({"dense_ppl": 50.0, "args": args, "runs": runs}))
    render(out)
    text = (tmp_path / "grid.md").read_text()
    assert "tokens of builtin, the text alone" in text      # files written before --calib-data / --calib-continue
    assert "| `flap` | 4.00x (3.00-5.00) | 2.25x (2.00-2.50) | not run | not run |" in text
    assert "| `default` | not run | not run | cannot reach | cannot reach |" in text
    assert "quick LoRA: the quick preset of the round it ran (not recorded" in text     # older files
    quick = {"r": 32, "max_steps": 48, "batch_size": 4, "seq_len": 128, "learning_rate": 3e-3,
             "ce_weight": 0.05, "distill_weight": 1.0, "mixed_precision": True}
    out.write_text(json.dumps({"dense_ppl": 50.0, "args": args, "quick": quick, "runs": runs}))
    render(out)
    assert ("quick LoRA: LoRA rank 32, 48 steps of 4 x 128 book-passage tokens, lr 0.003, next-token loss "
            "x 0.05 + KL x 1, bfloat16 where native") in (tmp_path / "grid.md").read_text()
    out.write_text(json.dumps({"dense_ppl": 50.0, "args": {**args, "calib_data": "lambada", "calib_continue": 192},
                               "runs": runs}))
    render(out)
    assert "tokens of lambada, each continued by 192 tokens the model sampled" in (tmp_path / "grid.md").read_text()
    out.write_text(json.dumps({"dense_ppl": 50.0, "args": args, "quick": quick, "runs": runs}))
    render(out)
    figure = json.loads((tmp_path / "grid.plotly.json").read_text())
    lines = {t["name"]: t for t in figure["data"]}
    assert lines["flap"]["y"] == [1.0, 4.0] and lines["flap + quick LoRA"]["y"] == [1.0, 2.25]
    assert lines["flap + quick LoRA"]["line"]["dash"] == "dot"


def test_run_files_of_the_same_settings_combine_into_one_grid(tmp_path):
    import json
    import sys
    from pathlib import Path

    import pytest

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
    from methods import combine

    args = {"draws": 1, "first_seed": 0, "calib_samples": 32, "calib_len": 128, "calib_data": "builtin",
            "windows": 256, "recover": True, "amounts": "0.2"}
    quick = {"r": 32, "max_steps": 48, "batch_size": 4, "seq_len": 128, "learning_rate": 3e-3,
             "ce_weight": 0.5, "distill_weight": 1.0, "mixed_precision": True}
    twenty, fifty = tmp_path / "a.json", tmp_path / "b.json"
    twenty.write_text(json.dumps({"dense_ppl": 50.0, "args": args, "quick": quick, "runs": [
        {"method": "flap", "amount": 0.2, "seed": 0, "ratio": 3.0, "ratio_quick": 2.0}]}))
    fifty.write_text(json.dumps({"dense_ppl": 50.0, "args": {**args, "amounts": "0.5"}, "quick": quick, "runs": [
        {"method": "flap", "amount": 0.5, "seed": 0, "ratio": 40.0, "ratio_quick": 10.0}]}))
    out = tmp_path / "grid.json"
    combine([twenty, fifty], out)
    assert json.loads(out.read_text())["args"]["amounts"] == "0.2,0.5"
    assert "| `flap` | 3.00x | 2.00x | 40.00x | 10.00x |" in (tmp_path / "grid.md").read_text()
    assert "next-token loss x 0.5" in (tmp_path / "grid.md").read_text()
    other = tmp_path / "c.json"                       # another quick preset: not one grid
    other.write_text(json.dumps({"dense_ppl": 50.0, "args": {**args, "amounts": "0.5"},
                                 "quick": {**quick, "ce_weight": 0.05}, "runs": []}))
    with pytest.raises(SystemExit, match="quick preset"):
        combine([twenty, other], tmp_path / "no.json")
    with pytest.raises(SystemExit, match="repeat a run"):
        combine([twenty, twenty], tmp_path / "no.json")
    assert not (tmp_path / "no.json").exists()
    with pytest.raises(SystemExit, match="new file"):            # would overwrite what it reads
        combine([twenty, fifty], fifty)


def test_flap_standardizes_channels_then_averages_each_head(calib):
    """FLAP's z: channel values (attention: squared, as FLAP's code does) standardized over the
    layer's channels with the sample std, then averaged over each group's channels."""
    model = tiny_model(n_heads=4, n_kv=2)
    df = score(model, calib, ScoreConfig("fluctuation"))
    layer = 1
    o = model.model.layers[layer].self_attn.o_proj
    x = _inputs_of(o, model, calib)
    values = (x.var(0, unbiased=False) * o.weight.double().square().sum(0)) ** 2      # (32,)
    z = (values - values.mean()) / values.std()
    got = df[(df.kind == "attn") & (df.layer == layer)].sort_values("group").z.to_numpy()
    torch.testing.assert_close(torch.tensor(got), z.reshape(2, 16).mean(1), rtol=1e-4, atol=1e-6)
    from pruner.prune import standardized

    rows = df[df.layer == layer]
    assert standardized(rows).tolist() == rows.z.tolist()      # the planner uses FLAP's own z


def test_the_page_shows_the_measured_methods_tables():
    from components import handlers

    text, figure = handlers.methods_results()
    assert "`flap`" in text and "`shortgpt`" in text and figure["data"]
    # today's grid first; the earlier tables, whose minitron is the former recipe, say so
    first, earlier = text.split("**Earlier runs**")
    assert "| `minitron` |" in first and "no hidden channels" in earlier
    # today's calibration (continued by the model) beside the grid, before the earlier runs
    assert "each continued by 192 tokens the model sampled" in first
