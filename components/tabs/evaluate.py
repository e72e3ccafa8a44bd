"""7 · Evaluate: the paper's Table 1 on a chosen subset: perplexity and zero-shot accuracy of
every model of the session, with the data's origin."""

from __future__ import annotations

import gradio as gr

from components import figures, handlers
from components import lesson_text as text
from components.server import HEAVY, STORE, friendly, gpu, persisted, session_of
from components.tabs.common import Tab, explain, notice
from pruner.tasks import TASKS

MODELS = ["original", "pruned", "pruned + LoRA"]

TITLE = "7 · Evaluate"


def layout() -> Tab:
    t = Tab()
    explain("The paper's Table 1, on a subset you choose: WikiText-2 / PTB perplexity "
            "(consecutive 128-token windows; 32 windows = the quick figure of the other tabs) and "
            "zero-shot accuracy scored like lm-evaluation-harness (acc_norm where it defines one), "
            "in percent with its standard error.")
    with gr.Row():
        t.which = gr.CheckboxGroup(MODELS, value=MODELS, label="models", info="every model of your session is ticked")
        t.corpora = gr.CheckboxGroup(["wikitext2", "ptb"], value=["wikitext2"], label="perplexity")
        t.tasks = gr.CheckboxGroup(list(TASKS), value=["piqa", "arc_easy"], label="zero-shot tasks")
    with gr.Row():
        t.windows = gr.Slider(4, 512, value=32, step=4, label="perplexity windows")
        t.limit = gr.Slider(10, 1000, value=50, step=10, label="items per task")
    with gr.Row():
        t.eval_btn = gr.Button("Evaluate", variant="primary")
        t.cancel = gr.Button("Cancel")
    t.table = gr.Dataframe(handlers.evaluation_display(None), label="results", interactive=False)
    t.fig = gr.Plot(label="results", elem_id="eval-fig")
    t.status = gr.Markdown(elem_classes="ps-status")
    notice(text.NOTICE["evaluate"])
    return t


def wire(ui) -> None:
    t = ui.evaluate
    event = t.eval_btn.click(run_evaluate, [t.which, t.corpora, t.tasks, t.windows, t.limit],
                             [t.table, t.fig, t.status], api_name="evaluate", **HEAVY)
    t.cancel.click(None, None, None, cancels=[event], api_visibility="private")


def session_models(request: gr.Request):
    """The models to tick: every model this session has."""
    try:
        have = list(session_of(request).models(STORE))
    except Exception:  # noqa: BLE001 - no session yet
        return gr.skip()
    return gr.update(value=have)


@friendly(3)
@persisted
@gpu
def run_evaluate(which, corpora, tasks, windows, limit, request: gr.Request,
                 progress=gr.Progress(track_tqdm=True)):
    table, hits = handlers.run_evaluation(STORE, session_of(request), list(which or []), list(corpora or []),
                                          list(tasks or []), windows, limit, progress)
    note = f" ({hits} of them from the class cache)" if hits else ""
    sources = handlers.evaluation_sources(table)
    return (handlers.evaluation_display(table), figures.evaluation_figure(table),
            f"Evaluated {len(table)} model(s){note}." + (f" Data: {sources}." if sources else ""))
