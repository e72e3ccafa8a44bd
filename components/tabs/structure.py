"""2 · Structure: the coupled groups of one layer and the dependency graph of one group."""

from __future__ import annotations

import gradio as gr
import pandas as pd

from components import handlers
from components import lesson_text as text
from components.server import STORE, friendly, session_of
from components.tabs.common import Tab, explain, notice

TITLE = "2 · Structure"


def layout() -> Tab:
    t = Tab()
    explain("LLM-Pruner's **dependency groups**: removing a neuron forces removing every neuron "
            "wired to it. A KV head's k/v rows are read by the query heads that share it (an "
            "out-degree dependency), and those heads' q rows and o_proj columns go with it "
            "(in-degree). An MLP channel is one row of gate and up and one column of down. Each "
            "colour below is one group: it is scored and removed as a unit.")
    t.layer = gr.Slider(0, 29, value=3, step=1, label="layer")
    t.structure_fig = gr.Plot(label="coupled structures of the layer")
    t.structure_table = gr.Dataframe(pd.DataFrame(columns=["group", "members", "parameters"]),
                                     label="groups and their parameters", interactive=False)
    gr.Markdown(text.DEPENDENCY, latex_delimiters=text.LATEX, elem_classes="ps-math")
    with gr.Row():
        t.graph_kind = gr.Radio(list(handlers.GRANULARITIES), value="KV group", label="granularity",
                                info="query head: the Prune tab's default attention unit")
        t.graph_group = gr.Number(0, label="group", precision=0, minimum=0)
    t.graph_fig = gr.Plot(label="dependency graph of the layer", elem_id="dependency-graph")
    t.graph_text = gr.Markdown()
    t.status = gr.Markdown(elem_classes="ps-status")
    t.notice = notice(text.NOTICE["structure"])
    return t


def wire(ui) -> None:
    t = ui.structure
    graph_inputs, graph_outputs = [t.layer, t.graph_kind, t.graph_group], [t.graph_fig, t.graph_text, t.status]
    t.layer.release(show_structure, t.layer, [t.structure_fig, t.structure_table, t.status], api_name="structure"
                    ).then(show_graph, graph_inputs, graph_outputs, api_visibility="private")
    t.graph_kind.change(show_graph, graph_inputs, graph_outputs, api_name="graph")
    t.graph_group.submit(show_graph, graph_inputs, graph_outputs, api_visibility="private")


@friendly(3)
def show_structure(layer, request: gr.Request):
    fig, table = handlers.structure(STORE, session_of(request), layer)
    return fig, table, f"Layer {int(layer)}."


@friendly(3)
def show_graph(layer, granularity, group, request: gr.Request):
    fig, why = handlers.dependency_graph(STORE, session_of(request), layer, granularity, group)
    return fig, why, f"Layer {int(layer)}: {granularity} {int(group)}."
