"""1 · Model: load the built-in default, a hub id or a local folder; the architecture's facts;
the teacher's view of the server (class cache and memory)."""

from __future__ import annotations

import gradio as gr
import pandas as pd

from components import handlers
from components import lesson_text as text
from components.server import (HEAVY, REGISTRY, STORE, friendly, gpu, message_of, persisted, session_of,
                               visitor_of)
from components.tabs.common import Tab, explain, notice
from components.tabs.prune import amount_updates
from pruner.prune import default_layer_range
from pruner.recipes import RECIPES

DEFAULT_SOURCE = "built-in default (SmolLM2-135M-Instruct)"

TITLE = "1 · Model"


def layout() -> Tab:
    t = Tab()
    explain("Load a decoder of a supported family: Llama, Mistral, Qwen2 / Qwen3, Gemma 1-3, Phi-3, "
            "Granite, SmolLM2 / SmolLM3, OLMo 2. The built-in default (SmolLM2-135M-Instruct) works "
            "offline: it is the Q4_1 GGUF copy shipped in a package, dequantized to float32, so "
            "its weights (and numbers) differ slightly from the hub's bfloat16 original. A hub id "
            "or a local folder works too. Loading another model replaces this session's work (the same "
            "model again keeps it); a model another visitor already loaded is shared, not loaded "
            "again.")
    with gr.Row():
        t.source_kind = gr.Radio([DEFAULT_SOURCE, "hub id or local folder"], value=DEFAULT_SOURCE, label="source")
        t.custom = gr.Textbox("", label="hub id or folder", placeholder="HuggingFaceTB/SmolLM2-360M-Instruct")
    t.load_btn = gr.Button("Load model", variant="primary")
    t.status = gr.Markdown(elem_classes="ps-status")
    t.facts = gr.Dataframe(pd.DataFrame(columns=["property", "value"]), label="architecture", interactive=False)
    t.notice = notice(text.NOTICE["model"])
    with gr.Accordion("Server (for teachers): class cache and memory", open=False):
        t.stats_btn = gr.Button("Refresh")
        t.stats_table = gr.Dataframe(pd.DataFrame(columns=["figure", "value"]), interactive=False,
                                     label="the class cache and the server's memory")
    return t


def wire(ui) -> None:
    t, s, p = ui.model, ui.structure, ui.prune
    status_lines = [s.status, ui.importance.score_status, ui.importance.compare_status, p.status,
                    p.contrast_status, ui.recover.status, ui.compare.speed, ui.evaluate.status,
                    ui.export.note, ui.export.gguf_note, ui.export.push_status]
    t.load_btn.click(load_model, [t.source_kind, t.custom],
                     [t.facts, s.layer, s.structure_fig, s.structure_table, p.attn_start, p.attn_end,
                      p.mlp_start, p.mlp_end, p.compensate, p.refit, t.status], api_name="load_model", **HEAVY
                     ).then(after_load, [s.layer, s.graph_kind, s.graph_group, p.unit, p.one_ratio, p.attn_share,
                                         p.attn_start, p.attn_end, p.mlp_start, p.mlp_end, p.amount,
                                         p.hidden_share],
                            [ui.importance.zoom_layer, s.graph_fig, s.graph_text, ui.evaluate.which, p.amount,
                             p.unit, p.status, t.notice, s.notice], api_visibility="private"
                     ).then(clear_errors, status_lines, status_lines, api_visibility="private")
    t.stats_btn.click(server_table, None, t.stats_table, api_name="server_table")
    gr.api(server_stats, api_name="server_stats")


@friendly(11)
@persisted
@gpu
def load_model(source_kind: str, custom: str, request: gr.Request, progress=gr.Progress(track_tqdm=True)):
    source = "default" if source_kind.startswith("built-in") else (custom or "").strip()
    if not source:
        raise ValueError("type a hub id (e.g. HuggingFaceTB/SmolLM2-135M-Instruct) or a local folder")
    session, table, shared = handlers.load(REGISTRY, STORE, visitor_of(request), source, progress)
    n = session.info["layers"]
    start, end = default_layer_range(n)
    fig, groups = handlers.structure(STORE, session, min(start, n - 1))
    slider = gr.update(maximum=n - 1, value=min(start, n - 1))
    # values and hints only: a maximum sent with them races the values' change events (stale
    # values above a new maximum were refused with toasts); the engine checks the ranges
    ranges = [gr.update(value=v, info=f"0 to {n} (this model's {n} layers)") for v in (start, end, start, end)]
    config, notes = RECIPES["default"][1].normalized(session.original(STORE).model)
    compensate_box = gr.update(value=config.compensate, info=notes[0] if notes else None)
    status = (f"Loaded **{session.info['name']}** ({session.info['family']}) on {session.info['device']} "
              f"({session.info['dtype']}). Next: look at its coupled structures, then score them."
              + (" *(shared: already loaded on this server, no new copy)*" if shared else ""))
    return (table, slider, fig, groups, *ranges, compensate_box, gr.update(value=config.refit), status)


def after_load(layer, granularity, group, unit, one_ratio, attn_share, a0, a1, m0, m1, amount, hidden_share,
               request: gr.Request):
    """After a load, every control that depends on the model: the zoom slider's range, the
    dependency graph, Evaluate's model choice, the amount's feasible maximum (switching to a ratio
    of groups where no share of parameters is feasible, and saying so), the notices' numbers."""
    try:
        session = session_of(request)
    except Exception:  # noqa: BLE001 - the load itself failed and said so
        return (gr.skip(),) * 9
    info = session.info
    n = info["layers"]
    zoom = gr.update(maximum=n - 1, value=min(int(layer), n - 1))
    try:
        fig, why = handlers.dependency_graph(STORE, session, min(int(layer), n - 1), granularity, 0)
    except Exception as err:  # noqa: BLE001 - shown as the graph's sentence, never a badge
        fig, why = gr.skip(), f"No dependency graph for this layer: {message_of(err)}"
    top = handlers.max_amount(STORE, session, unit, None if one_ratio else attn_share, (a0, a1), (m0, m1),
                              hidden_share)
    unit_update, amount_update, advice = amount_updates(top, amount, info)
    return (zoom, fig, why, gr.update(value=["original"]), amount_update, unit_update, advice,
            text.notice("model", info), text.notice("structure", info))


def clear_errors(*lines):
    """After a successful load, the error lines other tabs showed before it (e.g. "no model loaded")
    no longer hold: clear them; any other line stays."""
    return tuple("" if isinstance(t, str) and t.startswith("**Error:**") else gr.skip() for t in lines)


def server_stats() -> dict:
    """The class cache and memory at a glance (hits, entries, GB used of the budget)."""
    return {**STORE.stats(), "sessions": len(REGISTRY)}


SERVER_FIGURES = [  # (key, what a teacher reads, format)
    ("sessions", "visitors with a live session", "{:,}"), ("originals", "models loaded (shared)", "{:,}"),
    ("entries", "cached results", "{:,}"), ("hits", "requests served from the class cache", "{:,}"),
    ("misses", "requests computed", "{:,}"), ("hit_rate", "share served from the cache", "{:.0%}"),
    ("used_gb", "memory held by models and results, GB", "{:.2f}"),
    ("in_flight_gb", "memory held by steps running now, GB", "{:.2f}"),
    ("budget_gb", "memory budget for work, GB", "{:.2f}"), ("waiting", "steps waiting for memory now", "{:,}"),
    ("waits", "steps that waited for memory so far", "{:,}"), ("spilled", "models on disk now", "{:,}"),
    ("spills", "models moved to disk so far", "{:,}"), ("restores", "models read back from disk so far", "{:,}"),
]


def server_table() -> pd.DataFrame:
    """`server_stats` as a table a teacher reads at a glance."""
    stats = server_stats()
    return pd.DataFrame([{"figure": label, "value": fmt.format(stats[key])}
                         for key, label, fmt in SERVER_FIGURES if key in stats])
