"""Plotly figures drawn from the engine's tidy DataFrames (no torch here)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

KIND_TITLES = {"attn": "Attention: KV groups (with their query heads)", "qhead": "Attention: query heads",
               "mlp": "MLP channels", "hidden": "Hidden channels"}
COLORS = ["#4C78A8", "#F58518", "#54A24B", "#E45756", "#72B7B2", "#EECA3B", "#B279A2", "#FF9DA6",
          "#9D755D", "#BAB0AC"]
# distinct colours for groups drawn side by side (structure): 24 before any repeats
GROUP_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                "#bcbd22", "#17becf", "#393b79", "#e7ba52", "#637939", "#843c39", "#7b4173", "#3182bd",
                "#e6550d", "#31a354", "#756bb1", "#636363", "#fd8d3c", "#74c476", "#9e9ac8", "#fdd0a2"]
WIDE = 64          # more groups per layer than this: a layers x groups heatmap stops being readable
LEGEND_BELOW = dict(orientation="h", yanchor="top", y=-0.22, x=0)   # never over subplot titles


def _empty(message: str) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, font=dict(size=14, color="#666"))
    fig.update_layout(xaxis_visible=False, yaxis_visible=False, height=260,
                      margin=dict(l=10, r=10, t=10, b=10), template="plotly_white")
    return fig


def _colour_values(values: np.ndarray, scale: str) -> tuple[np.ndarray, str]:
    if scale == "log":
        return np.log10(np.maximum(values, np.nanmin(values[values > 0]) if (values > 0).any() else 1e-12)), "log10 score"
    if scale == "rank":
        ranks = pd.DataFrame(values).rank(axis=1, pct=True).to_numpy()   # rank within each layer
        return ranks, "rank in layer"
    return values, "score"


def importance_heatmap(scores: pd.DataFrame, kind: str, scale: str = "linear",
                       removed: pd.DataFrame | None = None, title: str | None = None) -> go.Figure:
    """Layers x groups heatmap of one kind; hover shows layer, group, score, params.
    `removed` rows (from Plan.removed_groups) are marked with an x before pruning happens."""
    sub = scores[scores.kind == kind]
    if sub.empty:
        return _empty(f"no {KIND_TITLES.get(kind, kind)} scores yet")
    if sub.groupby("layer").group.nunique().max() > WIDE:
        return sorted_importance_figure(sub, kind, scale, removed, title)
    score = sub.pivot(index="layer", columns="group", values="score").sort_index()
    params = sub.pivot(index="layer", columns="group", values="n_params").reindex_like(score)
    values, label = _colour_values(score.to_numpy(dtype=float), scale)
    custom = np.dstack([score.to_numpy(dtype=float), params.to_numpy(dtype=float)])
    fig = go.Figure(go.Heatmap(
        z=values, x=score.columns, y=score.index, colorscale="Viridis", customdata=custom,
        colorbar=dict(title=label),
        hovertemplate="layer %{y}<br>group %{x}<br>score %{customdata[0]:.4g}<br>"
                      "params %{customdata[1]:,.0f}<extra></extra>"))
    if removed is not None:
        gone = removed[removed.kind == kind]
        if len(gone):
            fig.add_trace(go.Scatter(x=gone.group, y=gone.layer, mode="markers", name="will be removed",
                                     marker=dict(symbol="x", size=6 if kind == "mlp" else 14,
                                                 color="#E45756", line=dict(width=1)),
                                     hovertemplate="layer %{y}, group %{x}: removed<extra></extra>"))
    fig.update_layout(title=title or KIND_TITLES.get(kind, kind), xaxis_title="group",
                      yaxis_title="layer", height=420, template="plotly_white",
                      margin=dict(l=60, r=20, t=50, b=40), legend=LEGEND_BELOW)
    return fig


def sorted_importance_figure(sub: pd.DataFrame, kind: str, scale: str = "linear",
                             removed: pd.DataFrame | None = None, title: str | None = None,
                             bins: int = 50) -> go.Figure:
    """Many groups per layer (MLP channels): each layer's scores sorted from least to most
    important and read at `bins` percentiles, so 1,536 channels x 30 layers stay readable; the
    plan's cut in each layer is a red marker at the share of groups it removes."""
    q = np.linspace(0, 1, bins)
    layers = sorted(sub.layer.unique())
    per_layer = {l: np.sort(sub[sub.layer == l].score.to_numpy(dtype=float)) for l in layers}
    grid = np.stack([np.quantile(per_layer[l], q) for l in layers])          # [layers, bins]
    # the x axis already is the rank within each layer: "rank" colours by log10 score instead
    values, label = _colour_values(grid, "linear" if scale == "linear" else "log")
    counts = {l: len(per_layer[l]) for l in layers}
    fig = go.Figure(go.Heatmap(
        z=values, x=100 * q, y=layers, colorscale="Viridis", colorbar=dict(title=label),
        customdata=grid, hovertemplate="layer %{y}<br>%{x:.0f}th percentile of its groups<br>"
                                       "score %{customdata:.4g}<extra></extra>"))
    if removed is not None:
        gone = removed[removed.kind == kind].groupby("layer").size()
        if len(gone):
            share = [100 * gone.get(l, 0) / counts[l] for l in layers]
            fig.add_trace(go.Scatter(x=share, y=layers, mode="markers+lines", name="cut: groups left of it go",
                                     line=dict(color="#E45756", width=2),
                                     marker=dict(symbol="line-ns", size=14, color="#E45756",
                                                 line=dict(width=3, color="#E45756")),
                                     hovertemplate="layer %{y}: %{x:.1f}% of its groups removed<extra></extra>"))
    n = max(counts.values())
    fig.update_layout(title=title or f"{KIND_TITLES.get(kind, kind)}: each layer's {n:,} scores, sorted",
                      xaxis_title="percentile within the layer (0 = least important)", yaxis_title="layer",
                      height=420, template="plotly_white", margin=dict(l=60, r=20, t=50, b=40),
                      legend=LEGEND_BELOW)
    return fig


def layer_importance_figure(scores: pd.DataFrame, kind: str, layer: int,
                            removed: pd.DataFrame | None = None) -> go.Figure:
    """One layer up close: every group's score in group order (zoom in with the mouse), removed
    ones in red, and the same scores sorted with the cut where the plan cuts."""
    sub = scores[(scores.kind == kind) & (scores.layer == int(layer))].sort_values("group")
    if sub.empty:
        return _empty(f"no {KIND_TITLES.get(kind, kind)} scores for layer {int(layer)}")
    gone = set()
    if removed is not None:
        gone = set(removed[(removed.kind == kind) & (removed.layer == int(layer))].group)
    colour = ["#E45756" if g in gone else "#4C78A8" for g in sub.group]
    fig = make_subplots(rows=1, cols=2, column_widths=[0.62, 0.38], horizontal_spacing=0.1,
                        subplot_titles=(f"layer {int(layer)}: score per group (drag to zoom)",
                                        "sorted, with the cut"))
    fig.add_trace(go.Bar(x=sub.group, y=sub.score, marker_color=colour, showlegend=False,
                         hovertemplate="group %{x}: %{y:.4g}<extra></extra>"), row=1, col=1)
    ordered = sub.sort_values("score").reset_index(drop=True)
    fig.add_trace(go.Scatter(x=100 * np.arange(len(ordered)) / max(1, len(ordered) - 1), y=ordered.score,
                             mode="lines", line=dict(color="#4C78A8"), showlegend=False,
                             hovertemplate="%{x:.0f}th percentile: %{y:.4g}<extra></extra>"), row=1, col=2)
    if gone:
        cut = 100 * len(gone) / len(sub)
        fig.add_vline(x=cut, line_color="#E45756", line_width=2, row=1, col=2,
                      annotation_text=f"{len(gone)} of {len(sub)} removed", annotation_position="top left")
    fig.update_xaxes(title_text="group", row=1, col=1)
    fig.update_xaxes(title_text="percentile", row=1, col=2)
    # log axes labelled in scientific notation at every tick (plotly's default labels the minor
    # ticks with bare digits, which read "3, 2, 0.01, 9, ..." between decades)
    axis = dict(type="log", tickformat=".0e") if (sub.score > 0).all() else dict(type="linear")
    fig.update_yaxes(title_text="score", row=1, col=1, **axis)
    fig.update_yaxes(row=1, col=2, **axis)
    fig.update_layout(height=330, template="plotly_white", margin=dict(l=60, r=20, t=50, b=40))
    return fig


def importance_histogram(scores: pd.DataFrame, removed: pd.DataFrame | None = None) -> go.Figure:
    """Distribution of scores per kind (log10), removed groups stacked in red."""
    if scores is None or scores.empty:
        return _empty("score groups to see their distribution")
    kinds = [k for k in ("attn", "qhead", "mlp", "hidden") if k in set(scores.kind)]
    fig = make_subplots(rows=1, cols=len(kinds), subplot_titles=[KIND_TITLES.get(k, k) for k in kinds])
    for col, kind in enumerate(kinds, start=1):
        sub = scores[scores.kind == kind]
        values = np.log10(np.maximum(sub.score.to_numpy(dtype=float), 1e-30))
        gone = np.zeros(len(sub), dtype=bool)
        if removed is not None:
            keys = set(zip(removed[removed.kind == kind].layer, removed[removed.kind == kind].group))
            gone = np.array([(l, g) in keys for l, g in zip(sub.layer, sub.group)])
        fig.add_trace(go.Histogram(x=values[~gone], name="kept", marker_color="#4C78A8", nbinsx=40,
                                   showlegend=col == 1), row=1, col=col)
        if gone.any():
            fig.add_trace(go.Histogram(x=values[gone], name="removed", marker_color="#E45756", nbinsx=40,
                                       showlegend=col == 1), row=1, col=col)
        fig.update_xaxes(title_text="log10 score", row=1, col=col)
    fig.update_layout(barmode="stack", height=300, template="plotly_white",
                      margin=dict(l=50, r=20, t=50, b=40), legend=LEGEND_BELOW)
    return fig


def rank_correlation_figure(corr: pd.DataFrame, empty: str = "run a comparison") -> go.Figure:
    """Bar chart of per-layer Spearman correlation between two rankings, one bar group per kind."""
    if corr.empty:
        return _empty(empty)
    fig = go.Figure()
    for i, (kind, sub) in enumerate(corr.groupby("kind")):
        fig.add_trace(go.Bar(x=sub.layer, y=sub.spearman, name=KIND_TITLES.get(kind, kind),
                             marker_color=COLORS[i]))
    fig.update_layout(barmode="group", yaxis=dict(range=[-1, 1], title="Spearman rank correlation"),
                      xaxis_title="layer", height=320, template="plotly_white",
                      margin=dict(l=60, r=20, t=30, b=40), legend=LEGEND_BELOW)
    return fig


def structure_figure(groups: pd.DataFrame, n_mlp_shown: int = 12) -> go.Figure:
    """Which rows / columns of q, k, v, o (per KV group) and gate, up, down (per channel) form one
    group: one horizontal bar per weight, coloured segments are groups."""
    if groups.empty:
        return _empty("load a model first")
    fig = make_subplots(rows=1, cols=2, column_widths=[0.5, 0.5], horizontal_spacing=0.12,
                        subplot_titles=("Attention: one colour per KV group",
                                        f"MLP: first {n_mlp_shown} channel groups"))
    for col, kind in ((1, "attn"), (2, "mlp")):
        sub = groups[groups.kind == kind]
        if kind == "mlp":
            sub = sub[sub.group < n_mlp_shown]
        for _, row in sub.iterrows():
            for part in row["indices"].split(", "):
                lo, _, hi = part.partition("-")
                lo, hi = int(lo), int(hi or lo)
                fig.add_trace(go.Bar(
                    y=[f"{row['role']} ({row['dim']})"], x=[hi - lo + 1], base=[lo], orientation="h",
                    marker_color=GROUP_COLORS[int(row["group"]) % len(GROUP_COLORS)], showlegend=False,
                    hovertemplate=(f"group {row['group']}<br>{row['param']}<br>{row['dim']} {lo}-{hi}"
                                   f"<br>{row['n_params']:,} params<extra></extra>")), row=1, col=col)
    fig.update_layout(barmode="overlay", height=330, template="plotly_white",
                      margin=dict(l=90, r=20, t=50, b=40))
    fig.update_xaxes(title_text="row / column index")
    return fig


def widths_figure(before: pd.DataFrame, after: pd.DataFrame,
                  sensitivity: pd.DataFrame | None = None) -> go.Figure:
    """Per-layer kept query heads and MLP width, before vs after, as bars; with a sensitivity
    allocation, a third panel shows each layer's measured loss increase that set its share."""
    if after is None or after.empty:
        return _empty("prune to see per-layer widths")
    titles = ["query heads (KV heads)", "MLP width"]
    if sensitivity is not None and not sensitivity.empty:
        titles.append("loss increase when pruned alone")
    fig = make_subplots(rows=1, cols=len(titles), subplot_titles=titles)
    for col, field in ((1, "heads"), (2, "intermediate_size")):
        fig.add_trace(go.Bar(x=before.layer, y=before[field], name="original", marker_color="#BAB0AC",
                             showlegend=col == 1), row=1, col=col)
        # the KV heads go in the hover, not as bar labels (30 thin bars: rotated, unreadable)
        hover = ("layer %{x}: %{y} query heads, %{customdata} KV heads<extra>pruned</extra>" if field == "heads"
                 else "layer %{x}: %{y:,} channels<extra>pruned</extra>")
        fig.add_trace(go.Bar(x=after.layer, y=after[field], name="pruned", marker_color="#4C78A8",
                             customdata=after.kv_heads, hovertemplate=hover, showlegend=col == 1), row=1, col=col)
    if len(titles) == 3:
        first = sensitivity
        if "step" in sensitivity:                    # iterative pruning: the first step's probes
            first = sensitivity[sensitivity.step == sensitivity.step.min()]
        for kind, colour in (("attn", "#F58518"), ("qhead", "#F58518"), ("mlp", "#54A24B")):
            sub = first[first.kind == kind]
            if len(sub):
                fig.add_trace(go.Bar(x=sub.layer, y=sub.loss_increase, name=f"{kind} sensitivity",
                                     marker_color=colour), row=1, col=3)
    fig.update_layout(barmode="overlay", height=330, template="plotly_white",
                      margin=dict(l=50, r=20, t=50, b=40), legend=LEGEND_BELOW)
    fig.update_xaxes(title_text="layer")
    return fig


def loss_figure(history: list[dict]) -> go.Figure:
    """The live LoRA loss curve (total, and CE / KL when distilling)."""
    if not history:
        return _empty("start recovery to see the loss")
    steps = [h["step"] for h in history]
    fig = go.Figure()
    losses = [h["loss"] for h in history]
    fig.add_trace(go.Scatter(x=steps, y=losses, name="loss", mode="lines+markers"))
    trend = [float(np.mean(losses[max(0, i - 4): i + 1])) for i in range(len(losses))]
    fig.add_trace(go.Scatter(x=steps, y=trend, name="loss, mean of last 5 steps", mode="lines",
                             line=dict(dash="dot", width=3)))
    if any(h.get("kl", 0) for h in history):
        fig.add_trace(go.Scatter(x=steps, y=[h["ce"] for h in history], name="cross-entropy", mode="lines"))
        fig.add_trace(go.Scatter(x=steps, y=[h["kl"] for h in history], name="KL to original", mode="lines"))
    fig.update_layout(xaxis_title="step", yaxis_title="loss", height=330, template="plotly_white",
                      margin=dict(l=50, r=20, t=20, b=40), legend=LEGEND_BELOW)
    return fig


def evaluation_figure(table: pd.DataFrame) -> go.Figure:
    """Grouped bars per metric, one colour per model (Table 1 of the paper, drawn); accuracy in
    percent with +- 1 standard error bars (with 50 items that is about 7 points)."""
    if table is None or table.empty:
        return _empty("evaluate to compare models")
    ppl = [c for c in table.columns if c.endswith(" ppl")]
    acc = [c for c in table.columns if f"{c} stderr" in table.columns]
    fig = make_subplots(rows=1, cols=2, column_widths=[0.3, 0.7], horizontal_spacing=0.1,
                        subplot_titles=("perplexity (lower is better)",
                                        "zero-shot accuracy, % (bars: +- 1 standard error)"))
    for i, row in table.reset_index(drop=True).iterrows():
        colour = COLORS[i % len(COLORS)]
        if ppl:
            fig.add_trace(go.Bar(x=ppl, y=[row[m] for m in ppl], name=row["model"], marker_color=colour,
                                 legendgroup=row["model"], hovertemplate="%{x}: %{y:,.2f}<extra></extra>"),
                          row=1, col=1)
        if acc:
            fig.add_trace(go.Bar(x=acc, y=[100 * row[m] for m in acc], name=row["model"],
                                 marker_color=colour, legendgroup=row["model"], showlegend=not ppl,
                                 error_y=dict(type="data", array=[100 * row[f"{m} stderr"] for m in acc],
                                              visible=True, color="#333"),
                                 hovertemplate="%{x}: %{y:.1f}%<extra></extra>"), row=1, col=2)
    fig.update_yaxes(title_text="%", row=1, col=2)
    fig.update_layout(barmode="group", height=380, template="plotly_white",
                      margin=dict(l=50, r=20, t=50, b=40), legend=LEGEND_BELOW)
    return fig


def methods_figure(data: dict | None) -> go.Figure:
    """bench/methods.py's figure: perplexity / dense against the share removed, one line per method."""
    return go.Figure(data) if data else _empty("run bench/methods.py to draw the methods side by side")


def recovery_curve_figure(table: pd.DataFrame, dense_ppl: float) -> go.Figure:
    """WikiText-2 perplexity / dense against recovery seconds, one line per data / objective, the
    two presets as labelled points and the targets as dotted lines (bench/recovery_curve.py)."""
    if table is None or table.empty:
        return _empty("run bench/recovery_curve.py to draw the recovery curve")
    fig = go.Figure()
    start = table[table.config == "pruned, no recovery"]
    curves = table[~table.config.str.startswith(("preset", "pruned, no"))]
    for i, (name, rows) in enumerate(curves.groupby("config", sort=False)):
        rows = pd.concat([start, rows]).sort_values("seconds")
        fig.add_trace(go.Scatter(x=rows.seconds, y=rows.ratio, name=name, mode="lines+markers",
                                 line=dict(color=COLORS[i % len(COLORS)]),
                                 hovertemplate="%{x:.0f} s: %{y:.2f}x dense<extra>" + name + "</extra>"))
    presets = table[table.config.str.startswith("preset")]
    fig.add_trace(go.Scatter(x=presets.seconds, y=presets.ratio, name="presets", mode="markers+text",
                             text=[c.replace("preset ", "") for c in presets.config], textposition="top left",
                             marker=dict(size=13, symbol="star", color="#222")))
    for target, label in ((1.85, "quick target 1.85x"), (1.5, "thorough target 1.5x")):
        fig.add_hline(y=target, line_dash="dot", line_color="#888", annotation_text=label,
                      annotation_position="bottom left")
    top = min(3.2, float(table.ratio.max()) + 0.1)          # a diverging run leaves the chart, not the scale
    fig.update_yaxes(range=[1.4, top])
    fig.update_layout(xaxis_title="recovery seconds on a 2-core CPU (data preparation included)",
                      yaxis_title=f"WikiText-2 perplexity / dense ({dense_ppl:.1f})", height=380,
                      template="plotly_white", margin=dict(l=60, r=20, t=20, b=50),
                      legend=LEGEND_BELOW)
    return fig


# node: (x, y, label); the decoder layer drawn left to right, the residual stream along y = -2.2
GRAPH_NODES = {
    "resid_in": (0.0, 0.0, "residual<br>stream in"), "attn_norm": (1.2, 0.0, "input<br>norm"),
    "q": (2.6, 1.3, "q_proj"), "k": (2.6, 0.0, "k_proj"), "v": (2.6, -1.3, "v_proj"),
    "attn": (4.0, 0.0, "softmax(q k^T) v<br>per head"), "o": (5.4, 0.0, "o_proj"), "add1": (6.5, 0.0, "+"),
    "mlp_norm": (7.6, 0.0, "post-attn<br>norm"), "gate": (9.0, 0.9, "gate_proj"), "up": (9.0, -0.9, "up_proj"),
    "act": (10.3, 0.0, "SiLU(gate) x up"), "down": (11.6, 0.0, "down_proj"), "add2": (12.7, 0.0, "+"),
    "resid_out": (13.8, 0.0, "residual<br>stream out"),
}
GRAPH_EDGES = [("resid_in", "attn_norm"), ("attn_norm", "q"), ("attn_norm", "k"), ("attn_norm", "v"),
               ("q", "attn"), ("k", "attn"), ("v", "attn"), ("attn", "o"), ("o", "add1"), ("add1", "mlp_norm"),
               ("mlp_norm", "gate"), ("mlp_norm", "up"), ("gate", "act"), ("up", "act"), ("act", "down"),
               ("down", "add2"), ("add2", "resid_out")]
SKIPS = [("resid_in", "add1"), ("add1", "add2")]          # residual connections, drawn underneath


def dependency_graph_figure(members: dict[str, str], title: str) -> go.Figure:
    """One decoder layer as LLM-Pruner's dependency graph: the group's members (node -> which
    slice) in red, the coupling edges between them thick, everything else grey."""
    fig = go.Figure()
    hot = set(members)

    def edge(a, b, y_via=None):
        (xa, ya, _), (xb, yb, _) = GRAPH_NODES[a], GRAPH_NODES[b]
        coupled = a in hot and b in hot
        xs, ys = ([xa, xa, xb, xb], [ya, y_via, y_via, yb]) if y_via is not None else ([xa, xb], [ya, yb])
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", hoverinfo="skip", showlegend=False,
                                 line=dict(color="#E45756" if coupled else "#C8C8C8", width=4 if coupled else 1.5)))
    for a, b in GRAPH_EDGES:
        edge(a, b)
    for a, b in SKIPS:
        edge(a, b, y_via=-2.2)
    names = list(GRAPH_NODES)
    fig.add_trace(go.Scatter(
        x=[GRAPH_NODES[n][0] for n in names], y=[GRAPH_NODES[n][1] for n in names], mode="markers+text",
        text=[GRAPH_NODES[n][2] for n in names], textposition="top center", showlegend=False,
        marker=dict(size=[26 if n in hot else 18 for n in names], symbol="square",
                    color=["#E45756" if n in hot else "#DDE3EA" for n in names],
                    line=dict(color="#555", width=1)),
        hovertext=[members.get(n, "not in this group") for n in names], hoverinfo="text"))
    for n, what in members.items():
        x, y, _ = GRAPH_NODES[n]
        fig.add_annotation(x=x, y=y, text=what, showarrow=False, yshift=-24, font=dict(size=11, color="#B0302F"))
    fig.update_layout(title=title, height=360, template="plotly_white", margin=dict(l=10, r=10, t=50, b=10),
                      xaxis=dict(visible=False, range=[-0.7, 14.5]), yaxis=dict(visible=False, range=[-2.7, 2.1]))
    return fig
