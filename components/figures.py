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
                      margin=dict(l=60, r=20, t=50, b=40), legend=dict(orientation="h", y=-0.15))
    return fig


def rank_correlation_figure(corr: pd.DataFrame) -> go.Figure:
    """Bar chart of per-layer Spearman correlation between two rankings, one bar group per kind."""
    if corr.empty:
        return _empty("run a comparison")
    fig = go.Figure()
    for i, (kind, sub) in enumerate(corr.groupby("kind")):
        fig.add_trace(go.Bar(x=sub.layer, y=sub.spearman, name=KIND_TITLES.get(kind, kind),
                             marker_color=COLORS[i]))
    fig.update_layout(barmode="group", yaxis=dict(range=[-1, 1], title="Spearman rank correlation"),
                      xaxis_title="layer", height=320, template="plotly_white",
                      margin=dict(l=60, r=20, t=30, b=40), legend=dict(orientation="h", y=1.12))
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
                    marker_color=COLORS[int(row["group"]) % len(COLORS)], showlegend=False,
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
        text = [f"{h} ({k})" for h, k in zip(after.heads, after.kv_heads)] if field == "heads" else None
        fig.add_trace(go.Bar(x=after.layer, y=after[field], name="pruned", marker_color="#4C78A8",
                             text=text, showlegend=col == 1), row=1, col=col)
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
                      margin=dict(l=50, r=20, t=50, b=40), legend=dict(orientation="h", y=1.15))
    fig.update_xaxes(title_text="layer")
    return fig


def loss_figure(history: list[dict]) -> go.Figure:
    """The live LoRA loss curve (total, and CE / KL when distilling)."""
    if not history:
        return _empty("start recovery to see the loss")
    steps = [h["step"] for h in history]
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=steps, y=[h["loss"] for h in history], name="loss", mode="lines+markers"))
    if any(h.get("kl", 0) for h in history):
        fig.add_trace(go.Scatter(x=steps, y=[h["ce"] for h in history], name="cross-entropy", mode="lines"))
        fig.add_trace(go.Scatter(x=steps, y=[h["kl"] for h in history], name="KL to original", mode="lines"))
    fig.update_layout(xaxis_title="step", yaxis_title="loss", height=330, template="plotly_white",
                      margin=dict(l=50, r=20, t=20, b=40), legend=dict(orientation="h", y=1.12))
    return fig


def evaluation_figure(table: pd.DataFrame) -> go.Figure:
    """Grouped bars per metric, one colour per model (Table 1 of the paper, drawn)."""
    if table is None or table.empty:
        return _empty("evaluate to compare models")
    metrics = [c for c in table.columns if c not in ("model", "params")]
    acc = [m for m in metrics if not m.endswith("ppl")]
    ppl = [m for m in metrics if m.endswith("ppl")]
    fig = make_subplots(rows=1, cols=2, column_widths=[0.3, 0.7],
                        subplot_titles=("perplexity (lower is better)", "zero-shot accuracy (%)"))
    for i, row in table.reset_index(drop=True).iterrows():
        colour = COLORS[i % len(COLORS)]
        if ppl:
            fig.add_trace(go.Bar(x=ppl, y=[row[m] for m in ppl], name=row["model"], marker_color=colour,
                                 legendgroup=row["model"]), row=1, col=1)
        if acc:
            fig.add_trace(go.Bar(x=acc, y=[100 * row[m] for m in acc], name=row["model"],
                                 marker_color=colour, legendgroup=row["model"], showlegend=not ppl),
                          row=1, col=2)
    fig.update_layout(barmode="group", height=360, template="plotly_white",
                      margin=dict(l=50, r=20, t=50, b=40), legend=dict(orientation="h", y=1.18))
    return fig
