"""5 · Recover: LoRA on a copy of the pruned model (a preset's settings, bound to LoraSettings'
fields), the live loss curve, Stop, Merge; the measured recovery curves."""

from __future__ import annotations

import gradio as gr

from components import controls, figures, handlers
from components import lesson_text as text
from components.server import HEAVY, STORE, friendly, gpu, persisted, session_of
from components.tabs.common import Tab, explain, notice
from components.tabs.evaluate import session_models
from pruner.recover import PRESET_DATA, PRESETS, LoraSettings, progress_text

RECOVERY_DATA = ["self", "builtin", "lambada", "alpaca"]

TITLE = "5 · Recover"


def layout() -> Tab:
    t = Tab()
    explain("LoRA on every projection (q, k, v, o, gate, up, down, like LLM-Pruner, whose rank is 8; "
            "alpha is twice the rank) on a copy of the pruned model; **full fine-tuning** (the "
            "`thorough` preset) trains every weight but the embeddings instead, for a gradient and "
            "two AdamW moments per weight (about 1 GB more on the default model). Steps run in "
            "bfloat16 where the processor multiplies it natively.\n\n**Data.** `lambada` (the "
            "`quick` and `thorough` presets): book passages (LAMBADA's test split, a benchmark "
            "this page does not report), from the data folder, the hub, or the first 600 "
            "passages shipped with the app (offline); the status names the source. `self`: the "
            "original model's own answers to 64 built-in instructions. The paper instead trains on Alpaca's 50k instructions (`alpaca`, from the hub) for 2 "
            "epochs. `builtin`: the project's calibration text (small).\n\n**Distillation.** "
            "With a weight above 0, every step also runs the original model on the same tokens "
            "and adds the KL divergence from its next-token distribution to the pruned model's, "
            "so the pruned model learns to match all of the original's probabilities, not only "
            "the one token in the text. The **next-token weight** scales the ordinary loss on the "
            "text itself: the `quick` preset keeps it small (0.05), so the pruned model learns the "
            "original's distribution rather than the style of the training books, which measured "
            "better on other text (WikiText-2).")
    quick = PRESETS["quick"]
    with gr.Row():
        t.preset = gr.Dropdown(sorted(PRESETS), value="quick", label="preset")
        t.steps = controls.slider(LoraSettings, "max_steps", quick.max_steps, step=1,
                                  maximum=max(p.max_steps for p in PRESETS.values()))
        t.lr = gr.Number(quick.learning_rate, label="learning rate")
        t.distill = controls.slider(LoraSettings, "distill_weight", quick.distill_weight, step=0.1, maximum=2.0)
        t.ce = controls.slider(LoraSettings, "ce_weight", quick.ce_weight, step=0.05, maximum=1.0)
        t.rank = controls.slider(LoraSettings, "r", quick.r, step=1, maximum=64)
        t.full = controls.checkbox(LoraSettings, "full_finetune", quick.full_finetune)
        t.data = gr.Dropdown(RECOVERY_DATA, value=PRESET_DATA["quick"], label="data",
                             info="the chosen preset's measured data is filled in")
    with gr.Row():
        t.recover_btn = gr.Button("Start recovery", variant="primary")
        t.stop_btn = gr.Button("Stop")
        t.merge_btn = gr.Button("Merge")
    t.status = gr.Markdown(elem_classes="ps-status")
    t.loss_fig = gr.Plot(label="loss")
    with gr.Accordion("Measured: perplexity against recovery time, per data and objective", open=False):
        gr.Plot(figures.recovery_curve_figure(*handlers.recovery_curve_results()),
                label="bench/recovery_curve.py", elem_id="recovery-curve")
    notice(text.NOTICE["recover"])
    return t


def wire(ui) -> None:
    t = ui.recover
    t.preset.change(preset_controls, t.preset, [t.steps, t.lr, t.distill, t.data, t.ce, t.rank, t.full],
                    api_visibility="private")
    t.recover_btn.click(run_recover, [t.preset, t.steps, t.lr, t.distill, t.data, t.ce, t.rank, t.full],
                        [t.loss_fig, t.status], api_name="recover", **HEAVY)
    t.stop_btn.click(stop_recover, None, t.status, api_name="stop_recover")
    t.merge_btn.click(run_merge, None, t.status, api_name="merge", **HEAVY).then(
        session_models, None, ui.evaluate.which, api_visibility="private")


def preset_controls(name):
    """A recovery preset's steps, learning rate, distillation weight, the data it was measured on,
    next-token weight, LoRA rank and whether it trains every weight."""
    s = PRESETS[name]
    return (s.max_steps, s.learning_rate, s.distill_weight, PRESET_DATA.get(name, "self"), s.ce_weight, s.r,
            s.full_finetune)


def merge_hint(recovery) -> str:
    if recovery.settings.full_finetune:
        return " Press **Merge** to take the trained model."
    return " Press **Merge** to fold LoRA into the weights."


@friendly(2)
@persisted
@gpu
def run_recover(preset_name, steps, lr, distill, data_source, ce_weight=None, rank=None, full_finetune=None,
                request: gr.Request = None, progress=gr.Progress(track_tqdm=True)):
    session = session_of(request)
    settings = handlers.recovery_settings(preset_name, steps, lr, distill, ce_weight, rank, full_finetune)
    with STORE.admit("recovery", handlers.recovery_peak(STORE, session, settings), progress):
        recovery, hit, _, note = handlers.start_recovery(STORE, session, settings, data_source, preset_name,
                                                         progress)
        if hit:
            yield (figures.loss_figure(recovery.history),
                   f"Recovered: {recovery.step} steps, final loss {recovery.history[-1]['loss']:.3f}."
                   + handlers.cache_note(True) + note + merge_hint(recovery))
            return
        original = session.original(STORE).model
        with handlers.accelerated(original, recovery.model):
            what = "every weight but the embeddings" if recovery.settings.full_finetune else "LoRA"
            precision = (" (steps in bfloat16, which this device computes natively; the weights stay float32)"
                         if recovery.autocast_dtype is not None else "")
            yield (figures.loss_figure([]),
                   f"Training {what} on {len(recovery.tokenized)} examples{precision} ...")
            for figures_now in recovery.train():
                yield (figures.loss_figure(recovery.history),
                       f"step {figures_now['step']}/{settings.max_steps}  loss {figures_now['loss']:.3f}  "
                       f"lr {figures_now['lr']:.1e}  "
                       f"{progress_text(recovery.history, recovery.settings)}")
        handlers.finish_recovery(STORE, session, recovery)
    done = "Finished all" if recovery.step >= recovery.settings.max_steps else "Stopped after"
    yield (figures.loss_figure(recovery.history),
           f"{done} {recovery.step} steps ({recovery.history[-1]['elapsed']:.0f}s) on "
           f"'{session.recovery_data}' data.{note}" + merge_hint(recovery))


@friendly(1)
def stop_recover(request: gr.Request):
    session = session_of(request)
    if session.recovery is not None:
        session.recovery.stop()
    return "Stopping after the current step ..."


@friendly(1)
@persisted
@gpu
def run_merge(request: gr.Request, progress=gr.Progress(track_tqdm=True)):
    progress(0.2, desc="merging LoRA into the weights, then a quick perplexity of both")
    return handlers.merge(STORE, session_of(request))
