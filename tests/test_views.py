"""The teaching views read correctly: wide kinds drawn as sorted percentiles with the plan's cut,
the dependency graph's members, feasible amount bounds, no correlation for a handful of groups,
Evaluate's table in percent with standard errors, and the contrast sentence built from numbers."""

import numpy as np
import pandas as pd
import pytest
import torch

from components import figures, handlers
from pruner.data import CalibrationSpec
from pruner.importance import ScoreConfig
from pruner.recover import preset
from components.session import SessionRegistry
from components.store import Store


def scores_frame(layers=3, attn=3, mlp=100, seed=0):
    rng = np.random.default_rng(seed)
    rows = [{"kind": "attn", "layer": l, "group": g, "score": float(rng.random()), "n_params": 10}
            for l in range(layers) for g in range(attn)]
    rows += [{"kind": "mlp", "layer": l, "group": g, "score": float(rng.random()) + 1e-3, "n_params": 3}
             for l in range(layers) for g in range(mlp)]
    return pd.DataFrame(rows)


def test_wide_kinds_are_drawn_as_sorted_percentiles_with_the_cut():
    scores = scores_frame()
    removed = scores[(scores.kind == "mlp") & (scores.layer == 1) & (scores.group < 25)]
    fig = figures.importance_heatmap(scores, "mlp", "linear", removed)
    heat = fig.data[0]
    assert np.shape(heat.z) == (3, 50)                          # layers x percentiles, not 100 columns
    layer0 = np.sort(scores[(scores.kind == "mlp") & (scores.layer == 0)].score)
    assert heat.z[0][0] == pytest.approx(layer0[0]) and heat.z[0][-1] == pytest.approx(layer0[-1])
    cut = fig.data[1]
    assert list(cut.x) == [0.0, 25.0, 0.0]                      # 25 of layer 1's 100 channels go
    narrow = figures.importance_heatmap(scores, "attn", "linear")
    assert np.shape(narrow.data[0].z) == (3, 3)                 # attention keeps its heatmap


def test_one_layer_view_marks_the_removed_groups():
    scores = scores_frame()
    removed = scores[(scores.kind == "mlp") & (scores.layer == 2) & (scores.group.isin([4, 7]))]
    fig = figures.layer_importance_figure(scores, "mlp", 2, removed)
    colours = list(fig.data[0].marker.color)
    assert colours.count("#E45756") == 2 and colours[4] == colours[7] == "#E45756"
    hist = figures.importance_histogram(scores, removed)
    assert sum(len(t.x) for t in hist.data if t.name == "removed") == 2


def test_correlation_is_skipped_below_eight_groups(monkeypatch):
    store = Store(budget_bytes=4 * 2**30)
    scores = scores_frame(attn=3, mlp=20)
    both = pd.concat([scores.assign(criterion="l1", aggregation="sum"),
                      scores.assign(criterion="l2", aggregation="sum",
                                    score=scores.score[::-1].to_numpy())])
    monkeypatch.setattr(store, "compute", lambda kind, spec, fn: (both, False, "k"))
    session = type("S", (), {"original": lambda self, s: type("O", (), {"model": None})(),
                             "original_key": "o"})()
    *_, corr_fig, table, note, _ = handlers.compare_scores(
        store, session, ScoreConfig("l1", "sum"), ScoreConfig("l2", "sum"), CalibrationSpec(samples=4, seq_len=16),
        "mlp", "rank")
    assert "fewer than 8 groups" in note and "KV groups" in note
    assert {t.name for t in corr_fig.data} == {figures.KIND_TITLES["mlp"]}
    assert len(table) > 0


def test_dependency_graph_members_for_each_granularity(tiny_folder):
    store = Store(budget_bytes=4 * 2**30)
    registry = SessionRegistry(store)
    session, *_ = handlers.load(registry, store, "v1", tiny_folder)
    fig, why = handlers.dependency_graph(store, session, 0, "KV group", 1)  # 4 heads / 2 KV heads, dim 8
    text = " ".join(a.text for a in fig.layout.annotations)
    assert "rows 8-15" in text and "rows 16-31" in text and "columns 16-31" in text
    assert "out-degree 2" in why
    _, why = handlers.dependency_graph(store, session, 0, "query head", 3)
    assert "shared with 1 other" in why
    _, why = handlers.dependency_graph(store, session, 1, "MLP channel", 63)
    assert "row 63" in why
    with pytest.raises(ValueError, match="choose 0 to 31"):
        handlers.dependency_graph(store, session, 0, "hidden channel", 32)
    assert handlers.max_amount(store, session, "groups", 0.0, (0, 2), (0, 2)) == 0.9


def test_the_amount_bound_is_what_the_layer_ranges_can_remove(tmp_path, tokenizer):
    """A 2-layer model with a 96-token vocabulary: MLP 2 x 3 x 32 x 64 = 12,288 of 33,856 parameters."""
    from conftest import tiny_model

    tiny_model(vocab=96, n_heads=4, n_kv=2, layers=2, inter=64).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    store = Store(budget_bytes=4 * 2**30)
    session, *_ = handlers.load(SessionRegistry(store), store, "v1", str(tmp_path))
    total = session.info["params"]
    mlp, attn = 2 * 3 * 32 * 64, 2 * (2 * 32 * 32 + 2 * 32 * 16)
    bound = lambda room: np.floor(100 * 0.95 * room) / 100                   # noqa: E731
    assert handlers.max_amount(store, session, "parameters", 0.0, (0, 2), (0, 2)) == bound(mlp / total)
    assert handlers.max_amount(store, session, "parameters", None, (0, 2), (0, 2)) == \
        bound((mlp + attn) / total)
    assert handlers.max_amount(store, session, "parameters", 0.0, (0, 2), (1, 2)) == bound(mlp / 2 / total)
    # half of the amount A from hidden channels first: A / 2 <= room (1 - A / 2), A <= room / (1 / 2 + room / 2)
    room = mlp / total
    assert handlers.max_amount(store, session, "parameters", 0.0, (0, 2), (0, 2), 0.5) == \
        bound(room / (0.5 + 0.5 * room))
    # an API call past the bound is refused before anything is scored
    from pruner.prune import PruneConfig

    past = PruneConfig(amount=min(0.9, room + 0.01), unit="parameters", attn_share=0.0, attn_layers=(0, 2),
                       mlp_layers=(0, 2))
    for step in (handlers.preview, handlers.run_prune):
        with pytest.raises(ValueError, match="cannot be removed: .* MLP channels"):
            step(store, session, ScoreConfig("taylor-squared", "last"), past)
    assert session.scores is None


def test_evaluation_table_reads_in_percent_with_standard_errors():
    table = pd.DataFrame([{"model": "original", "params": 134515008, "wikitext2 ppl": 55.0412,
                           "piqa": 0.62, "piqa stderr": 0.0686, "piqa n": 50}])
    shown = handlers.evaluation_display(table)
    assert list(shown.columns) == ["model", "parameters", "wikitext2 ppl", "piqa acc % (± s.e.)"]
    assert shown.iloc[0].tolist() == ["original", "134,515,008", "55.04", "62.0 ± 6.9"]
    fig = figures.evaluation_figure(table)
    bars = [t for t in fig.data if t.error_y and t.error_y.array is not None]
    assert bars and bars[0].y[0] == pytest.approx(62.0) and bars[0].error_y.array[0] == pytest.approx(6.86)
    assert list(handlers.evaluation_display(None).columns)[:2] == ["model", "parameters"]


def test_removed_structures_are_counted_from_the_widths():
    import pandas as pd
    from types import SimpleNamespace

    before = pd.DataFrame({"layer": [0, 1, 2], "heads": [9, 9, 9], "kv_heads": [3, 3, 3], "head_dim": [64] * 3,
                           "intermediate_size": [1536] * 3})
    after = before.assign(intermediate_size=[1536, 1000, 900])
    assert handlers.removed_structures(SimpleNamespace(widths_before=before, widths_after=after)) == \
        "1,172 MLP channels in 2 layers"
    after = after.assign(heads=[9, 6, 9], kv_heads=[3, 2, 3])
    assert handlers.removed_structures(SimpleNamespace(widths_before=before, widths_after=after)) == \
        "3 query heads, 1 KV head and 1,172 MLP channels in 2 layers"
    assert handlers.removed_structures(SimpleNamespace(widths_before=before, widths_after=before.iloc[:2])) == \
        "1 whole decoder layer"


def test_contrast_sentence_comes_from_the_measurement():
    speed, ppl = handlers.SPEED, handlers.QUICK_PPL
    base = {"parameters": 100, "non-zero parameters": 100, "MACs / token": 50, "weight memory (MiB)": 10,
            speed: 20.0, "decode speed range": (19.0, 21.0), ppl: 50.0}
    sparse = {**base, "non-zero parameters": 80, speed: 20.5, "decode speed range": (19.5, 21.5)}
    structured = {**base, "parameters": 80, "non-zero parameters": 80, "MACs / token": 40,
                  speed: 22.0, "decode speed range": (21.0, 23.0)}
    text = handlers.contrast_text(base, sparse, structured, 0.25, "4 query heads in 2 layers")
    assert "zeroed 25% of each projection matrix (20.0% of all weights" in text and "parameters +0.0%" in text
    assert "Structured pruning removed 4 query heads in 2 layers: parameters" in text
    assert "parameters -20.0%, MACs -20.0%" in text and "22.0 tokens/s (range 21.0-23.0)" in text
    table = handlers.comparison_table(base, ("structured", structured), ("unstructured 20%", sparse))
    row = table.set_index("metric").loc["parameters"]
    assert row["change (structured)"] == "-20.0%" and row["change (unstructured 20%)"] == "+0.0%"


def test_recovery_falls_back_to_the_originals_answers_and_is_kept_without_its_optimizer(tiny_folder, monkeypatch):
    from pruner.data import DataUnavailableError
    from pruner.prune import PruneConfig
    from pruner.recover import Example

    store = Store(budget_bytes=4 * 2**30)
    session, *_ = handlers.load(SessionRegistry(store), store, "v1", tiny_folder)
    config = PruneConfig(amount=0.5, unit="groups", attn_layers=(0, 2), mlp_layers=(0, 2))
    handlers.run_prune(store, session, ScoreConfig("l1", "sum"), config)
    asked = []

    def examples(source, *args, **kwargs):
        asked.append(source)
        if source == "lambada":
            raise DataUnavailableError("lambada is not available. Use --data-dir")
        return [Example("Say hi.", "hi there")] * 4

    monkeypatch.setattr(handlers, "recovery_examples", examples)
    recovery, hit, _, note = handlers.start_recovery(store, session, preset("quick", max_steps=2, learning_rate=1e-3,
                                                                            distill_weight=0.0), "lambada", "quick")
    assert asked == ["lambada", "self"] and not hit
    assert "'lambada' data is not available here" in note and session.recovery_data == "self"
    from components.store import size_of

    for _ in recovery.train():
        pass
    with_moments = size_of(recovery)
    handlers.finish_recovery(store, session, recovery)      # kept for Merge, without AdamW's moments
    adapters = sum(p.numel() * p.element_size() for p in recovery.model.parameters() if p.requires_grad)
    assert recovery.optimizer is None and with_moments - size_of(recovery) >= 2 * adapters   # + step counters
    assert store.lookup(session.recovery_key) is recovery


def test_an_embedding_heavy_model_gets_advice_before_any_work():
    info = {"params": 1_000_000, "params_non_embedding": 20_000}
    assert handlers.amount_advice(0.25, 0.2, info) == ""
    some = handlers.amount_advice(0.15, 0.2, info)
    assert "at most **15%**" in some and "embeddings hold 98%" in some and "count the amount in groups" in some
    none = handlers.amount_advice(0.0, 0.2, info)
    assert "switched to a share of **groups**" in none


def test_a_prompt_past_the_context_is_refused_before_any_model_runs(tiny_folder, monkeypatch):
    from pruner.generate import GenerationSettings

    store = Store(budget_bytes=4 * 2**30)
    session, *_ = handlers.load(SessionRegistry(store), store, "v1", tiny_folder)
    context = session.original(store).model.config.max_position_embeddings
    monkeypatch.setattr(handlers, "stream", lambda *a, **k: pytest.fail("a model ran"))
    with pytest.raises(ValueError, match=f"context of {context} positions"):
        next(handlers.compare_stream(store, session, "word " * context, GenerationSettings(max_new_tokens=4)))


def test_models_shown_together_are_timed_in_one_run_and_evaluate_reuses_the_quick_ppl(tiny_folder, monkeypatch):
    """The measurement protocol on the page: the Prune table's two speeds come from one
    side-by-side run, Compare times all the models it shows in one run, a redraw shows that same
    run, and Evaluate's WikiText-2 at the quick setting is the quick perplexity, not a second pass."""
    from pruner.generate import GenerationSettings
    from pruner.prune import PruneConfig
    from pruner.protocol import QUICK_PPL_WINDOWS, Speed

    runs = []

    def fake_speeds(models, tokenizer, *args, **kwargs):
        runs.append(len(models))
        return [Speed(10.0 + i, 9.0 + i, 11.0 + i) for i in range(len(models))]

    monkeypatch.setattr(handlers, "decode_speeds", fake_speeds)
    store = Store(budget_bytes=4 * 2**30)
    session, *_ = handlers.load(SessionRegistry(store), store, "v1", tiny_folder)
    table, *_ = handlers.run_prune(store, session, ScoreConfig("l1", "sum"),
                                   PruneConfig(amount=0.5, unit="groups", attn_layers=(0, 2), mlp_layers=(0, 2)))
    assert runs == [2]
    row = table.set_index("metric").loc[handlers.SPEED]
    assert (row["original"], row["pruned"]) == ("10.0", "11.0")
    assert handlers.redraw(store, session)["before_after"].equals(table) and runs == [2]
    *_, (texts, rates, cached) = list(handlers.compare_stream(store, session, "Hello", GenerationSettings(max_new_tokens=4)))
    assert runs == [2, 2] and rates == {"original": "10.0 tokens/s (range 9.0-11.0)",
                                        "pruned": "11.0 tokens/s (range 10.0-12.0)"}

    calls = []
    real = handlers.evaluate
    monkeypatch.setattr(handlers, "evaluate", lambda *a, **k: calls.append(a[2]) or real(*a, **k))
    quick = handlers.cached_measure(store, session.prune_key)[handlers.QUICK_PPL]
    table, _ = handlers.run_evaluation(store, session, ["pruned"], ["wikitext2"], [], QUICK_PPL_WINDOWS, 10)
    assert calls == [] and table.loc[0, "wikitext2 ppl"] == quick


def test_dependency_graph_nodes_come_from_the_family_fused_or_not():
    from families import tiny_family_model
    from pruner.groups import family, group_slices

    phi3 = tiny_family_model("phi3")           # fused qkv_proj (q 32 | k 16 | v 16 rows) and gate_up_proj
    nodes = handlers.graph_members(group_slices(family(phi3, "attn", 1), 1))
    assert nodes == {"q": "qkv_proj rows 16-31", "k": "qkv_proj rows 40-47", "v": "qkv_proj rows 56-63",
                     "o": "o_proj columns 16-31"}
    nodes = handlers.graph_members(group_slices(family(phi3, "mlp", 1), 5))
    assert nodes == {"gate": "gate_up_proj row 5", "up": "gate_up_proj row 53", "down": "down_proj column 5"}
    nodes = handlers.graph_members(group_slices(family(phi3, "hidden"), 3, layer=1))
    assert nodes["q"] == nodes["k"] == nodes["v"] == "qkv_proj column 3"
    assert nodes["gate"] == nodes["up"] == "gate_up_proj column 3"
    assert nodes["attn_norm"] == "input_layernorm weight 3" and nodes["mlp_norm"] == "post_attention_layernorm weight 3"


def test_recovery_settings_keep_the_presets_rank_and_weight_when_left_out():
    """/recover without the next-token weight and rank (an older client, a saved session) gets the
    preset's; with them, the rank keeps the preset's alpha / r."""
    quick = preset("quick")
    s = handlers.recovery_settings("quick", 5, 1e-3, 1.0)
    assert (s.max_steps, s.learning_rate, s.distill_weight, s.r, s.alpha, s.ce_weight) == \
        (5, 1e-3, 1.0, quick.r, quick.alpha, quick.ce_weight)
    s = handlers.recovery_settings("quick", 5, 1e-3, 0.0, 1.0, 8)
    assert (s.ce_weight, s.distill_weight, s.r, s.alpha) == (1.0, 0.0, 8, 8 * quick.alpha // quick.r)
    assert handlers.recovery_settings("thorough", 5, 1e-3, 1.0).full_finetune      # the preset's
    assert not handlers.recovery_settings("thorough", 5, 1e-3, 1.0, None, None, False).full_finetune
    assert handlers.recovery_settings("quick", 5, 1e-3, 1.0, None, None, True).full_finetune


def test_the_score_step_continues_given_text_and_a_restart_replays_it_as_it_ran(tiny_folder):
    """The Importance tab's continuation reaches the calibration tokens, is saved with the step,
    and steps saved before it existed replay without one (as they ran)."""
    store = Store(budget_bytes=4 * 2**30)
    registry = SessionRegistry(store)
    session, *_ = handlers.load(registry, store, "v1", tiny_folder)
    handlers.run_score(store, session, ScoreConfig("taylor-squared", "last"),
                       CalibrationSpec("builtin", 2, 16, continuation=8))
    assert tuple(session.calibration.shape) == (2, 24)
    assert torch.equal(session.calibration[:, :16],
                       CalibrationSpec("builtin", 2, 16, continuation=0).ids(session.original(store).tokenizer))
    steps = {"load": session.steps["load"], "score": dict(session.steps["score"])}
    assert steps["score"]["continuation"] == 8
    replayed = handlers.replay(registry, store, "v2", steps)
    assert torch.equal(replayed.calibration, session.calibration)
    del steps["score"]["continuation"]                 # a step saved before the continuation existed
    assert tuple(handlers.replay(registry, store, "v3", steps).calibration.shape) == (2, 16)
