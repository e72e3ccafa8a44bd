"""4 · Prune: the recipe switch (the default, the paper's, the field's) with their measured table,
the amount with its unit, the form's other settings (bound to PruneConfig's fields), Preview,
Prune, and the unstructured contrast."""

from __future__ import annotations

import gradio as gr
import pandas as pd

from components import controls, figures, handlers
from components import lesson_text as text
from components.server import HEAVY, STORE, form, friendly, gpu, persisted, session_of
from components.tabs.common import Tab, explain, notice
from components.tabs.evaluate import session_models
from pruner.importance import ScoreConfig
from pruner.prune import PruneConfig
from pruner.recipes import RECIPE_NOTES, RECIPES

START = RECIPES["default"][1]      # the tab starts on the default recipe

DEFAULT_RECIPE_TEXT = (
    "**The default recipe** removes 20% of all parameters from **MLP channels only** (layers 3-27; the "
    "first 3 and last 2 layers stay whole), **the early layers cut deeper** (1.5x the ratio at layer 3 "
    "falling linearly to 0.5x at layer 27, each layer's share also scaled by how low its channels score: "
    "the layers' geometric-mean median score over its own), ranks each channel by **squared first-order "
    "Taylor** importance of its down_proj column alone (sum (dL/dW x W)^2, Molchanov et al. 2019; **last-only** "
    "aggregation), and **refits** each pruned "
    "down_proj (its kept columns and a bias) by damped least squares, so that the layer reproduces the dense layer's output on "
    "the inputs the partly pruned model feeds it; calibrated on 32 x 128 tokens of **text the model samples "
    "itself** (self-calibration: no data needed), sampled plainly from its whole distribution (no top-p or "
    "top-k cut). Measured on this model (README, `bench/depth_ramp.py`, "
    "`bench/methods.py`, `bench/default_lever.py`): WikiText-2 perplexity 1.89x dense over six calibration "
    "draws (2.07x on text sampled with top-p 0.95 and top-k 50, 2.09x ranking by |dL/dW x W| unsquared as "
    "well, 2.12x with the linear ramp alone as well, 2.17x with one "
    "ratio in every layer; FLAP's mean compensation instead of the "
    "refit: 0.09x worse on other draws), "
    "against 4.85x for the paper's recipe "
    "(KV groups and MLP channels at one ratio, element-wise sum): on a small model with 3 KV groups, one KV "
    "group is a third of a layer's attention. Pick **llm-pruner (the paper)** above to run the paper's "
    "recipe.")

# The Preview / Prune form: one named input (and API parameter) each, in this order. PruneConfig's
# fields by their names; the page's own: one_ratio (no budget split), the layer ranges' ends, the
# Importance tab's criterion / aggregation and the heatmaps' colour scale.
FORM = ["unit", "amount", "scope", "strategy", "attn_granularity", "one_ratio", "attn_share", "hidden_share",
        "compensate", "recompute_means", "refit", "allocation", "attn_start", "attn_end", "mlp_start", "mlp_end",
        "iterative_steps", "criterion", "aggregation", "scale"]

RECIPE_LABELS = {"default": "default (best measured)", "llm-pruner": "llm-pruner (the paper)",
                 "flap": "flap", "wanda-sp": "wanda-sp", "minitron": "minitron", "shortgpt": "shortgpt (depth)"}
RECIPE_OF_LABEL = {label: name for name, label in RECIPE_LABELS.items()}
AMOUNT_MIN, AMOUNT_MAX, AMOUNT_STEP = handlers.AMOUNT_MIN, handlers.AMOUNT_MAX, handlers.AMOUNT_STEP

TITLE = "4 · Prune"


def configs(values: dict, model=None) -> tuple[ScoreConfig, PruneConfig, list[str]]:
    """The named config objects the form describes, the PruneConfig normalised by the engine for
    `model` (settings that cannot apply turned off), and one note per setting turned off."""
    config = PruneConfig(
        amount=float(values["amount"]), unit=values["unit"], scope=values["scope"], strategy=values["strategy"],
        attn_granularity=values["attn_granularity"],
        attn_share=None if values["one_ratio"] else float(values["attn_share"]),
        hidden_share=float(values["hidden_share"]),
        compensate=bool(values["compensate"]), recompute_means=bool(values["recompute_means"]),
        refit=bool(values["refit"]),
        allocation=values["allocation"], attn_layers=(int(values["attn_start"]), int(values["attn_end"])),
        mlp_layers=(int(values["mlp_start"]), int(values["mlp_end"])), iterative_steps=int(values["iterative_steps"]))
    config, notes = config.normalized(model)
    return ScoreConfig(values["criterion"], values["aggregation"]), config, notes


def layout() -> Tab:
    t = Tab()
    explain("Choose how much to remove and where. **Preview** marks the groups that will go on "
            "the heatmaps; **Prune** slices a copy of the model (the original stays intact) "
            "and measures both.")
    gr.Markdown(DEFAULT_RECIPE_TEXT, elem_classes="ps-explain")
    with gr.Row():
        t.recipe = gr.Radio(list(RECIPE_OF_LABEL), value=RECIPE_LABELS["default"], label="recipe")
    t.recipe_note = gr.Markdown()
    with gr.Accordion("Measured: the field's methods side by side on this model (bench/methods.py)",
                      open=False, elem_id="methods"):
        methods_table, methods_data = handlers.methods_results()
        gr.Markdown(methods_table)
        gr.Plot(figures.methods_figure(methods_data), label="bench/methods.py")
    with gr.Row():
        t.unit = controls.radio(PruneConfig, "unit", START.unit)
        t.amount = controls.slider(PruneConfig, "amount", START.amount, step=AMOUNT_STEP, minimum=AMOUNT_MIN,
                                   maximum=AMOUNT_MAX)
        t.strategy = controls.radio(PruneConfig, "strategy", START.strategy)
        t.scope = controls.radio(PruneConfig, "scope", START.scope)
    with gr.Row():
        t.attn_granularity = controls.radio(PruneConfig, "attn_granularity", START.attn_granularity)
        t.one_ratio = gr.Checkbox(START.attn_share is None, label="one ratio for attention and MLP (LLM-Pruner)")
        t.attn_share = controls.slider(PruneConfig, "attn_share", START.attn_share or 0.0, step=0.05)
        t.hidden_share = controls.slider(PruneConfig, "hidden_share", START.hidden_share, step=0.05, maximum=0.95)
        t.compensate = controls.checkbox(PruneConfig, "compensate", START.compensate)
        t.recompute_means = controls.checkbox(PruneConfig, "recompute_means", START.recompute_means)
        t.refit = controls.checkbox(PruneConfig, "refit", START.refit)
        t.allocation = controls.radio(PruneConfig, "allocation", START.allocation)
    with gr.Row():
        t.attn_start = gr.Number(3, label="attention layers from", precision=0, minimum=0)
        t.attn_end = gr.Number(28, label="to (exclusive)", precision=0)
        t.mlp_start = gr.Number(3, label="MLP layers from", precision=0, minimum=0)
        t.mlp_end = gr.Number(28, label="to (exclusive)", precision=0)
        t.iterative_steps = controls.slider(PruneConfig, "iterative_steps", START.iterative_steps, step=1, maximum=5)
    with gr.Row():
        t.preview_btn = gr.Button("Preview")
        t.prune_btn = gr.Button("Prune", variant="primary")
        t.contrast_btn = gr.Button("Contrast: unstructured magnitude pruning")
        t.cancel = gr.Button("Cancel")
    t.status = gr.Markdown(elem_classes="ps-status")
    with gr.Row():
        t.attn_map = gr.Plot(label="attention (x = removed)")
        t.mlp_map = gr.Plot(label="MLP (x or red line = removed)", elem_id="prune-mlp-map")
    explain(f"Every figure below is measured one way on every tab: the quick perplexity is "
            f"the **{handlers.QUICK_PPL}**; decoding speed is the **{handlers.SPEED_HOW}**.")
    t.before_after = gr.Dataframe(pd.DataFrame(columns=handlers.COMPARISON_COLUMNS),
                                  label="structured: before / after", interactive=False, elem_id="before-after")
    t.widths_fig = gr.Plot(label="kept widths per layer")
    t.contrast_table = gr.Dataframe(pd.DataFrame(columns=["metric", "original", "structured", "unstructured"]),
                                    label="structured vs unstructured, side by side", interactive=False,
                                    elem_id="contrast")
    t.contrast_status = gr.Markdown(elem_classes="ps-status")
    notice(text.NOTICE["prune"])
    return t


def form_inputs(ui) -> list:
    """The components of FORM, in its order (the last three live on the Importance tab)."""
    return [getattr(ui.importance if name in ("criterion", "aggregation", "scale") else ui.prune, name)
            for name in FORM]


def wire(ui) -> None:
    t, imp = ui.prune, ui.importance
    t.recipe.change(apply_recipe, t.recipe, [t.strategy, t.attn_granularity, t.one_ratio, t.attn_share, t.hidden_share,
                                             t.compensate, t.refit, t.allocation, imp.criterion, imp.aggregation,
                                             t.recipe_note],
                    api_name="recipe")
    bounds_inputs = [t.unit, t.one_ratio, t.attn_share, t.attn_start, t.attn_end, t.mlp_start, t.mlp_end, t.amount,
                     t.hidden_share]
    bounds_outputs = [t.unit, t.amount, t.attn_share, t.status]
    for control in (t.unit, t.one_ratio, t.attn_start, t.attn_end, t.mlp_start, t.mlp_end):
        control.change(amount_bounds, bounds_inputs, bounds_outputs, api_visibility="private")
    t.attn_share.release(amount_bounds, bounds_inputs, bounds_outputs, api_visibility="private")
    t.hidden_share.release(amount_bounds, bounds_inputs, bounds_outputs, api_visibility="private")
    inputs = form_inputs(ui)
    t.preview_btn.click(preview_prune, inputs, [t.attn_map, t.mlp_map, t.status], api_name="preview", **HEAVY)
    t.prune_event = t.prune_btn.click(run_prune, inputs, [t.before_after, t.widths_fig, t.attn_map, t.mlp_map,
                                                          t.status], api_name="prune", **HEAVY)
    t.prune_event.then(session_models, None, ui.evaluate.which, api_visibility="private")
    t.contrast_btn.click(run_contrast, t.amount, [t.contrast_table, t.contrast_status], api_name="contrast", **HEAVY)
    t.cancel.click(None, None, None, cancels=[t.prune_event], api_visibility="private")


@friendly(3)
@gpu
@form(FORM)
def preview_prune(values: dict, request: gr.Request, progress=gr.Progress(track_tqdm=True)):
    session = session_of(request)
    score_config, config, _ = configs(values, session.original(STORE).model)
    progress(0.2, desc="planning which groups go")
    return handlers.preview(STORE, session, score_config, config, values["scale"])


@friendly(5)
@persisted
@gpu
@form(FORM)
def run_prune(values: dict, request: gr.Request, progress=gr.Progress(track_tqdm=True)):
    session = session_of(request)
    score_config, config, notes = configs(values, session.original(STORE).model)
    return handlers.run_prune(STORE, session, score_config, config, values["scale"], progress, notes)


@friendly(2)
@gpu
def run_contrast(amount, request: gr.Request, progress=gr.Progress(track_tqdm=True)):
    progress(0.05, desc="magnitude pruning a copy, then measuring it")
    return handlers.magnitude_contrast(STORE, session_of(request), amount, progress)


def recipe_controls(name: str) -> tuple:
    """The Prune tab's controls for a named recipe of pruner/recipes.py."""
    score_config, prune_config = RECIPES[name]
    return (prune_config.strategy, prune_config.attn_granularity, prune_config.attn_share is None,
            prune_config.attn_share or 0.0, prune_config.hidden_share, prune_config.compensate, prune_config.refit,
            prune_config.allocation, score_config.criterion, score_config.aggregation)


def apply_recipe(label: str):
    name = RECIPE_OF_LABEL[label]
    (strategy, granularity, one, share, hidden, compensate, refit, allocation, criterion,
     aggregation) = recipe_controls(name)
    cite, what = RECIPE_NOTES[name]
    note = (f"Recipe **{label}** ({cite}): {what}. Set: strategy {strategy}, attention groups {granularity}, "
            + ("one ratio for attention and MLP (attention's share is then not used)" if one
               else f"attention's share {share:g}")
            + (f", hidden (embedding) channels' share {hidden:g} (removed first)" if hidden else "")
            + f", compensation {'on' if compensate else 'off'}, least-squares refit {'on' if refit else 'off'}, "
            f"per-layer ratios {allocation}. "
            f"It also set the **Importance** tab's criterion to {criterion} and aggregation to {aggregation}: "
            "Preview and Prune score with those.")
    return (strategy, granularity, one, gr.update(value=share, interactive=not one), hidden, compensate, refit,
            allocation, criterion, aggregation, note)


def amount_updates(top: float, amount: float, info: dict) -> tuple:
    """(unit, amount, sentence) for a feasible maximum `top`: the slider kept valid (its maximum
    above its minimum, its value inside), or, where no share of parameters is feasible, the amount
    counted in groups, with the reason."""
    advice = handlers.amount_advice(top, float(amount), info)
    if top < 2 * AMOUNT_MIN:
        return "groups", gr.update(maximum=AMOUNT_MAX, value=min(float(amount), 0.2)), advice
    return gr.skip(), gr.update(maximum=top, value=min(float(amount), top)), advice


def amount_bounds(unit, one_ratio, attn_share, a0, a1, m0, m1, amount, hidden_share, request: gr.Request):
    """The amount slider's maximum (what the chosen kinds and layer ranges can remove), its value
    kept inside it, and a sentence when the amount asked for cannot be reached."""
    try:
        session = session_of(request)
        top = handlers.max_amount(STORE, session, unit, None if one_ratio else attn_share, (a0, a1), (m0, m1),
                                  hidden_share)
    except Exception:  # noqa: BLE001 - no model yet: keep the static bounds
        return gr.skip(), gr.skip(), gr.skip(), gr.skip()
    unit_update, amount_update, advice = amount_updates(top, amount, session.info)
    # a fraction of groups is always feasible: keep the sentence that explained a switch to it
    status = advice if unit == "parameters" else gr.skip()
    return unit_update, amount_update, gr.update(interactive=not one_ratio), status


def restored_controls(saved: dict, info: dict) -> tuple:
    """The tab's unit, amount (with its feasible maximum) and layer ranges, as the session last
    pruned (handlers.prune_controls)."""
    n = info["layers"]
    if saved["unit"] == "groups":
        unit, amount = "groups", gr.update(maximum=AMOUNT_MAX, value=saved["amount"])
    else:
        switched, amount, _ = amount_updates(saved["top"], saved["amount"], info)
        unit = switched if isinstance(switched, str) else "parameters"
    ranges = [gr.update(value=v, info=f"0 to {n} (this model's {n} layers)") for v in saved["ranges"]]
    return (unit, amount, *ranges)

