"""3 · Importance: score every group with a criterion and an aggregation on calibration tokens;
heatmaps (layers x groups), one layer up close, score histograms; two criteria compared."""

from __future__ import annotations

import gradio as gr
import pandas as pd

from components import controls, figures, handlers
from components import lesson_text as text
from components.server import HEAVY, STORE, friendly, gpu, persisted, session_of
from components.tabs.common import Tab, explain, notice
from pruner.data import CONTINUATION_TOKENS, CalibrationSpec, text_origin
from pruner.importance import AGGREGATIONS, CRITERIA, ScoreConfig
from pruner.recipes import RECIPES

SCORE_START = RECIPES["default"][0]       # the tab starts on the default recipe
CALIBRATION_SOURCES = ["self", "builtin", "lambada", "wikitext2", "ptb"]

TITLE = "3 · Importance"


def layout() -> Tab:
    t = Tab()
    explain("Group importance on a few calibration samples: first-order Taylor |dL/dW · W| "
            "(vector- or element-wise, or each term squared: the default recipe's), second order with "
            "the Fisher diagonal (float32), or magnitude / random baselines; member scores are aggregated "
            "over the group. The calibration text is by default **written by the model itself** (`self`: "
            "sampled from its start-of-text token, seeded), which needs no data and measured better than the "
            "built-in text (README).")
    calib = CalibrationSpec()
    with gr.Row():
        t.criterion = controls.dropdown(ScoreConfig, "criterion", SCORE_START.criterion, choices=list(CRITERIA))
        t.aggregation = controls.dropdown(ScoreConfig, "aggregation", SCORE_START.aggregation)
        t.calib = controls.dropdown(CalibrationSpec, "source", calib.source, choices=CALIBRATION_SOURCES,
                                    info=None)
        t.samples = controls.number(CalibrationSpec, "samples", calib.samples)
        t.seq_len = controls.number(CalibrationSpec, "seq_len", calib.seq_len)
        t.continuation = controls.number(CalibrationSpec, "continuation", calib.continuation)
    with gr.Accordion("The paper's formulas: criteria (Eq. 3-5) and aggregations", open=True, elem_id="formulas"):
        gr.Markdown(text.CRITERIA, latex_delimiters=text.LATEX, elem_classes="ps-math")
        gr.Markdown(text.AGGREGATIONS, latex_delimiters=text.LATEX, elem_classes="ps-math")
    with gr.Row():
        t.score_btn = gr.Button("Score groups", variant="primary")
        t.scale = gr.Radio(["linear", "log", "rank"], value="rank", label="colour")
    t.score_status = gr.Markdown()
    with gr.Row():
        t.attn_map = gr.Plot(label="attention")
        t.mlp_map = gr.Plot(label="MLP", elem_id="mlp-map")
    with gr.Row():
        t.zoom_kind = gr.Radio(["mlp", "attn"], value="mlp", label="zoom into",
                               info="one layer's groups, with the cut of the last preview / prune")
        t.zoom_layer = gr.Slider(0, 29, value=3, step=1, label="layer")
    t.layer_fig = gr.Plot(label="one layer up close", elem_id="layer-fig")
    t.hist_fig = gr.Plot(label="score distribution")
    t.score_summary = gr.Dataframe(pd.DataFrame(columns=["kind", "min", "median", "max"]),
                                   label="score range per kind", interactive=False)
    with gr.Accordion("Compare two criteria or aggregations", open=False):
        with gr.Row():
            t.crit_b = gr.Dropdown(list(CRITERIA), value="l2", label="criterion B")
            t.agg_b = gr.Dropdown(list(AGGREGATIONS), value="sum", label="aggregation B")
            t.compare_kind = gr.Radio(["attn", "mlp"], value="mlp", label="heatmap")
        t.compare_btn = gr.Button("Compare A (above) with B")
        with gr.Row():
            t.map_a = gr.Plot(label="A")
            t.map_b = gr.Plot(label="B")
        t.corr_fig = gr.Plot(label="rank correlation per layer")
        t.disagree = gr.Dataframe(pd.DataFrame(columns=handlers.DISAGREE_COLUMNS),
                                  label="groups where A and B disagree most (rank within the layer)",
                                  interactive=False)
        t.compare_status = gr.Markdown(elem_classes="ps-status")
    notice(text.NOTICE["importance"])
    return t


def wire(ui) -> None:
    t = ui.importance
    views = [t.layer_fig, t.hist_fig, t.score_status]
    t.score_btn.click(run_score, [t.criterion, t.aggregation, t.calib, t.samples, t.seq_len, t.scale, t.zoom_kind,
                                  t.zoom_layer, t.continuation],
                      [t.attn_map, t.mlp_map, t.score_summary, t.layer_fig, t.hist_fig, t.score_status],
                      api_name="score", **HEAVY)
    t.zoom_kind.change(zoom, [t.zoom_kind, t.zoom_layer], views, api_name="zoom")
    t.zoom_layer.release(zoom, [t.zoom_kind, t.zoom_layer], views, api_visibility="private")
    t.scale.change(redraw, t.scale, [t.attn_map, t.mlp_map, t.score_status], api_name="redraw")
    t.compare_btn.click(compare_scores, [t.criterion, t.aggregation, t.crit_b, t.agg_b, t.calib, t.samples,
                                         t.seq_len, t.compare_kind, t.scale, t.continuation],
                        [t.map_a, t.map_b, t.corr_fig, t.disagree, t.compare_status], api_name="compare_scores",
                        **HEAVY)


@friendly(6)
@persisted
@gpu
def run_score(criterion, aggregation, source, samples, seq_len, scale, zoom_kind="mlp", zoom_layer=3,
              continuation=CONTINUATION_TOKENS, request: gr.Request = None, progress=gr.Progress(track_tqdm=True)):
    session = session_of(request)
    config = ScoreConfig(criterion, aggregation)
    calib = CalibrationSpec(source, samples, seq_len, continuation=continuation)
    progress(0.05, desc=f"scoring with {criterion}: tokenizing the calibration text")
    scores, hit = handlers.run_score(STORE, session, config, calib, progress=progress)
    session.removed = None
    attn, mlp = handlers.heatmaps(session, scale)
    top = scores.groupby("kind").score.agg(["min", "median", "max"]).reset_index()
    top[["min", "median", "max"]] = top[["min", "median", "max"]].map(lambda v: f"{v:.4g}")
    return (attn, mlp, top, *handlers.layer_views(session, zoom_kind, zoom_layer),
            f"Scored {len(scores):,} groups with **{criterion}** / **{aggregation}** on "
            f"{calib.samples} x {calib.seq_len} calibration tokens ({calib.source}"
            + (f": {text_origin(calib.source)}" if calib.source in ("self", "builtin") else "")
            + (f"; each window continued by up to {calib.continuation} tokens the model wrote"
               if calib.source != "self" and calib.continuation else "") + ")."
            + handlers.cache_note(hit))


@friendly(3)
def zoom(kind, layer, request: gr.Request):
    return (*handlers.layer_views(session_of(request), kind, layer),
            f"Layer {int(layer)}, {figures.KIND_TITLES.get(kind, kind)}.")


@friendly(3)
def redraw(scale, request: gr.Request):
    return (*handlers.heatmaps(session_of(request), scale), f"Colour: {scale}.")


@friendly(5)
@gpu
def compare_scores(crit_a, agg_a, crit_b, agg_b, source, samples, seq_len, kind, scale,
                   continuation=CONTINUATION_TOKENS, request: gr.Request = None,
                   progress=gr.Progress(track_tqdm=True)):
    progress(0.1, desc="scoring both")
    map_a, map_b, corr, table, note, hit = handlers.compare_scores(
        STORE, session_of(request), ScoreConfig(crit_a, agg_a), ScoreConfig(crit_b, agg_b),
        CalibrationSpec(source, samples, seq_len, continuation=continuation), kind, scale)
    return map_a, map_b, corr, table, "Compared." + note + handlers.cache_note(hit)
