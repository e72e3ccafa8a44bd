"""Pruning Studio: see LLM-Pruner structural pruning happen, in the browser.

    python app.py            # serves http://127.0.0.1:7860 on the built-in default model

Tabs follow the lesson: Model, Structure, Importance, Prune, Recover, Compare, Evaluate, Export.
Every event has a named API endpoint (see README: driving the lesson with gradio_client).
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import traceback
import uuid
from pathlib import Path

import gradio as gr
import pandas as pd
import torch

from components import controls, figures, handlers
from components import lesson_text as text
from components.session import SessionError, SessionRegistry
from components.lesson import start_warm_start, warm_start_enabled
from components.persist import SessionFiles
from components.spill import Spill
from components.store import CapacityError, Store
from pruner.data import CALIBRATION_LEN, CALIBRATION_SAMPLES, DataUnavailableError
from pruner.generate import PAPER_PROMPT, GenerationSettings
from pruner.importance import AGGREGATIONS, CRITERIA, ScoreConfig
from pruner.models import ModelLoadError
from pruner.prune import PruneConfig, default_layer_range
from pruner.recipes import RECIPE_NOTES, RECIPES
from pruner.recover import PRESET_DATA, PRESETS, LoraSettings
from pruner.resources import return_large_frees_to_os, server_threads
from pruner.tasks import TASKS

ASSETS = Path(__file__).resolve().parent / "components" / "assets"
log = logging.getLogger("pruning-studio")
return_large_frees_to_os()      # freed model copies go back to the OS: the process's RSS tracks what it holds
torch.set_num_threads(server_threads())     # the container's cores (CPU quota counted), one spared from 4 up
STORE = Store()
REGISTRY = SessionRegistry(STORE)
FILES = SessionFiles(ttl_s=REGISTRY.ttl_s)      # each visitor's steps on disk: a restart loses nothing
# an evicted export's files go with its cache entry
STORE.on_evict = lambda entry: handlers.export_disk().forget(entry.value) if entry.kind in ("export", "gguf") else None
# pruned and merged models and finished recoveries that do not fit go to the export disk (its budget)
# and come back in a second
STORE.spill = Spill(handlers.export_disk())
SCORE_START, START = RECIPES["default"]      # the Score and Prune tabs start on the default recipe
HEAVY = "heavy"   # one concurrency slot shared by everything that runs a model

try:  # Hugging Face Spaces (ZeroGPU): GPU work runs inside @spaces.GPU and returns CPU objects
    import spaces

    gpu = spaces.GPU(duration=120)
except ImportError:
    def gpu(fn):
        return fn

DEFAULT_RECIPE_TEXT = (
    "**The default recipe** removes 20% of all parameters from **MLP channels only** (layers 3-27; the "
    "first 3 and last 2 layers stay whole), ranks each channel by first-order Taylor importance of its "
    "down_proj column alone (**last-only** aggregation), and folds the removed channels' mean output into "
    "a down_proj bias (**compensation**), calibrated on 32 x 128 built-in tokens. Measured on this model "
    "(README, `bench/quality.py` row 14 and its calibration draws): WikiText-2 perplexity 2.29x dense on "
    "average over six calibration draws (2.28x in the table's row 14), against 4.44x for the paper's recipe "
    "(row 0: KV groups and MLP channels at one ratio, element-wise sum): on a small model with 3 KV groups, "
    "one KV group is a third of a layer's attention. Pick **llm-pruner (the paper)** above to run the "
    "paper's recipe.")


def message_of(err: Exception) -> str:
    """A readable message for any failure; out-of-memory frees the GPU cache and says so."""
    if isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower():
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return ("Out of memory: the GPU cache was freed. Try fewer samples, a shorter sequence, a smaller "
                "limit, or a smaller model.")
    if isinstance(err, (SessionError, ModelLoadError, DataUnavailableError, ValueError, CapacityError)):
        return str(err)
    if isinstance(err, gr.Error):
        return str(err.message)
    log.error("unexpected error:\n%s", traceback.format_exc())
    return (f"Something went wrong ({type(err).__name__}: {str(err)[:300]}). Your session and the original "
            "model are unchanged.")


def friendly(n_outputs: int):
    """Every failure becomes a message in the event's status line (its last output) and a toast;
    the other outputs keep their previous, good values (no stale error badges on panels). Works
    for plain functions and generators."""
    def wrap(fn):
        def failed(err: Exception):
            text = message_of(err)
            gr.Warning(text)
            updates = [gr.skip()] * (n_outputs - 1) + [f"**Error:** {text}"]
            return updates[0] if n_outputs == 1 else tuple(updates)

        if inspect.isgeneratorfunction(fn):
            @functools.wraps(fn)
            def gen_wrapper(*args, **kwargs):
                try:
                    yield from fn(*args, **kwargs)
                except Exception as err:  # noqa: BLE001 - shown to the visitor
                    yield failed(err)
            return gen_wrapper

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except Exception as err:  # noqa: BLE001 - shown to the visitor
                return failed(err)
        return wrapper
    return wrap


def persisted(fn):
    """Save the visitor's steps (inputs only, a few KB) after the event, so a server restart can
    replay them; for plain functions and generators."""
    def save(args, kwargs):
        request = next((a for a in list(args) + list(kwargs.values()) if isinstance(a, gr.Request)), None)
        session = REGISTRY.find(visitor_of(request)) if request is not None else None
        if session is not None:
            FILES.save(session.key, session.steps)

    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen_wrapper(*args, **kwargs):
            yield from fn(*args, **kwargs)
            save(args, kwargs)
        return gen_wrapper

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        result = fn(*args, **kwargs)
        save(args, kwargs)
        return result
    return wrapper


def visitor_of(request: gr.Request) -> str:
    return REGISTRY.visitor(request.session_hash)


def session_of(request: gr.Request):
    return REGISTRY.get(visitor_of(request))


# ----------------------------------------------------------------------------- event functions

RESTORED_PANELS = 22      # restore's outputs between the visitor key and the status line


def _held(session) -> str:
    held = ["model"] + [what for what, have in (("scores", session.scores is not None),
                                                ("a pruned model", session.prune_key),
                                                ("a LoRA recovery", session.recovery or session.recovery_key),
                                                ("pruned + LoRA", session.merged_key)) if have]
    return f"**{session.info.get('name', session.source)}** ({', '.join(held)})"


def _panels(session, message: str) -> tuple:
    """Every panel drawn from the session (restore's outputs after the visitor key)."""
    parts = handlers.redraw(STORE, session)
    n = session.info["layers"]
    got = lambda name, i=None: (parts[name] if i is None else parts[name][i]) if name in parts else gr.skip()  # noqa: E731
    return (parts["facts"], gr.update(maximum=n - 1, value=parts["layer"]), got("structure", 0),
            got("structure", 1), got("heatmaps", 0), got("heatmaps", 1), got("score_summary"),
            gr.update(maximum=n - 1, value=min(3, n - 1)), got("before_after"), got("widths"),
            got("prune_maps", 0), got("prune_maps", 1), got("loss"), got("evaluation", 0), got("evaluation", 1),
            gr.update(value=parts["models"]), *_amount_controls(parts["prune_controls"], session.info), message)


def _amount_controls(controls: dict, info: dict) -> tuple:
    """The Prune tab's mode, amount (with its feasible maximum) and layer ranges, restored."""
    n = info["layers"]
    if controls["mode"] == "ratio of groups":
        mode, amount = "ratio of groups", gr.update(maximum=handlers.AMOUNT_MAX, value=controls["amount"])
    else:
        switched, amount, _ = amount_updates(controls["top"], controls["amount"], info)
        mode = switched if isinstance(switched, str) else "share of parameters"
    ranges = [gr.update(value=v, info=f"0 to {n} (this model's {n} layers)") for v in controls["ranges"]]
    return (mode, amount, *ranges)


def restore(visitor_key, request: gr.Request, progress=gr.Progress()):
    """Page load: remember this browser's visitor key (a new one on a first visit) and redraw
    every panel from what this visitor's session holds, so a reload loses nothing. After a server
    restart the session is first rebuilt from the steps saved on disk (replayed through the class
    cache), and the status says so."""
    key = visitor_key or f"v-{uuid.uuid4().hex}"
    REGISTRY.alias(request.session_hash, key)
    session = REGISTRY.find(key)
    skip = (gr.skip(),) * RESTORED_PANELS
    if session is None:
        steps = FILES.load(key)
        if steps:
            try:
                session = handlers.replay(REGISTRY, STORE, key, steps, progress)
            except Exception as err:  # noqa: BLE001 - the visitor starts again, told why
                FILES.drop(key)
                return (key, *skip, f"The server restarted and your session could not be rebuilt "
                                    f"({message_of(err)}): press **Load model**.")
            return (key, *_panels(session, f"Restored after a server restart: {_held(session)}, redrawn "
                                           "below and on every tab. Carry on where you left off."))
        if REGISTRY.expired(key):
            return (key, *skip, f"Your previous session expired after {REGISTRY.ttl_s / 60:.0f} idle minutes "
                                "and its models were freed: press **Load model** to start again.")
        return (key, *skip, "Press **Load model** to start.")
    try:
        return (key, *_panels(session, f"Welcome back: your session still holds {_held(session)}, redrawn "
                                       "below and on every tab. Carry on where you left off."))
    except Exception as err:  # noqa: BLE001 - e.g. its original was freed: say so, keep the key
        return (key, *skip, message_of(err))


def reconnect(visitor_key: str = "", request: gr.Request = None) -> str:
    """What a page reload does, for API clients: this connection takes over the session of the
    visitor key given (an earlier connection's session hash, or the browser's key), and the
    status line says what it holds."""
    if not visitor_key:
        return "Give the visitor key of an earlier connection (its session hash)."
    return restore(visitor_key, request)[-1]


@friendly(10)
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
    return (table, slider, fig, groups, *ranges, compensate_box, status)


@friendly(3)
def show_structure(layer, request: gr.Request):
    fig, table = handlers.structure(STORE, session_of(request), layer)
    return fig, table, f"Layer {int(layer)}."


@friendly(6)
@persisted
@gpu
def run_score(criterion, aggregation, source, samples, seq_len, scale, zoom_kind="mlp", zoom_layer=3,
              request: gr.Request = None, progress=gr.Progress(track_tqdm=True)):
    session = session_of(request)
    progress(0.05, desc=f"scoring with {criterion}: tokenizing the calibration text")
    scores, hit = handlers.run_score(STORE, session, criterion, aggregation, source, samples, seq_len,
                                     progress=progress)
    session.removed = None
    attn, mlp = handlers.heatmaps(session, scale)
    top = scores.groupby("kind").score.agg(["min", "median", "max"]).reset_index()
    top[["min", "median", "max"]] = top[["min", "median", "max"]].map(lambda v: f"{v:.4g}")
    return attn, mlp, top, *handlers.layer_views(session, zoom_kind, zoom_layer), (f"Scored {len(scores):,} groups with **{criterion}** / **{aggregation}** on "
                            f"{int(samples)} x {int(seq_len)} calibration tokens ({source})."
                            + handlers.cache_note(hit))


@friendly(3)
def zoom(kind, layer, request: gr.Request):
    return (*handlers.layer_views(session_of(request), kind, layer),
            f"Layer {int(layer)}, {figures.KIND_TITLES.get(kind, kind)}.")


@friendly(3)
def show_graph(layer, granularity, group, request: gr.Request):
    fig, why = handlers.dependency_graph(STORE, session_of(request), layer, granularity, group)
    return fig, why, f"Layer {int(layer)}: {granularity} {int(group)}."


@friendly(3)
def redraw(scale, request: gr.Request):
    return (*handlers.heatmaps(session_of(request), scale), f"Colour: {scale}.")


@friendly(5)
@gpu
def compare_scores(crit_a, agg_a, crit_b, agg_b, source, samples, seq_len, kind, scale,
                   request: gr.Request, progress=gr.Progress(track_tqdm=True)):
    progress(0.1, desc="scoring both")
    map_a, map_b, corr, table, note, hit = handlers.compare_scores(
        STORE, session_of(request), crit_a, agg_a, crit_b, agg_b, source, samples, seq_len, kind, scale)
    return map_a, map_b, corr, table, "Compared." + note + handlers.cache_note(hit)


def _config(session, mode, amount, scope, strategy, granularity, one_ratio, attn_share, compensate,
            recompute, allocation, a0, a1, m0, m1, steps):
    return handlers.prune_config(mode, amount, scope, strategy, granularity,
                                 None if one_ratio else attn_share, compensate, a0, a1, m0, m1, steps,
                                 allocation, recompute, model=session.original(STORE).model)


@friendly(3)
@gpu
def preview_prune(mode, amount, scope, strategy, granularity, one_ratio, attn_share, compensate, recompute,
                  allocation, a0, a1, m0, m1, steps, criterion, aggregation, scale, request: gr.Request,
                  progress=gr.Progress(track_tqdm=True)):
    session = session_of(request)
    config, _ = _config(session, mode, amount, scope, strategy, granularity, one_ratio, attn_share, compensate,
                        recompute, allocation, a0, a1, m0, m1, steps)
    progress(0.2, desc="planning which groups go")
    return handlers.preview(STORE, session, config, criterion, aggregation, scale)


@friendly(5)
@persisted
@gpu
def run_prune(mode, amount, scope, strategy, granularity, one_ratio, attn_share, compensate, recompute,
              allocation, a0, a1, m0, m1, steps, criterion, aggregation, scale, request: gr.Request,
              progress=gr.Progress(track_tqdm=True)):
    session = session_of(request)
    config, notes = _config(session, mode, amount, scope, strategy, granularity, one_ratio, attn_share,
                            compensate, recompute, allocation, a0, a1, m0, m1, steps)
    return handlers.run_prune(STORE, session, config, criterion, aggregation, scale, progress, notes)


@friendly(2)
@gpu
def run_contrast(amount, request: gr.Request, progress=gr.Progress(track_tqdm=True)):
    progress(0.05, desc="magnitude pruning a copy, then measuring it")
    return handlers.magnitude_contrast(STORE, session_of(request), amount, progress)


@friendly(2)
@persisted
@gpu
def run_recover(preset_name, steps, lr, distill, data_source, request: gr.Request,
                progress=gr.Progress(track_tqdm=True)):
    session = session_of(request)
    with STORE.admit("recovery", handlers.recovery_peak(STORE, session, preset_name, distill), progress):
        recovery, hit, _, note = handlers.start_recovery(STORE, session, preset_name, steps, lr, distill,
                                                         data_source, progress)
        if hit:
            yield (figures.loss_figure(recovery.history),
                   f"Recovered: {recovery.step} steps, final loss {recovery.history[-1]['loss']:.3f}."
                   + handlers.cache_note(True) + note + " Press **Merge** to fold LoRA into the weights.")
            return
        yield figures.loss_figure([]), f"Training LoRA on {len(recovery.tokenized)} examples ..."
        original = session.original(STORE).model
        with handlers.accelerated(original, recovery.model):
            for figures_now in recovery.train():
                s = recovery.settings
                yield (figures.loss_figure(recovery.history),
                       f"step {figures_now['step']}/{s.max_steps}  loss {figures_now['loss']:.3f}  "
                       f"lr {figures_now['lr']:.1e}  {figures_now['elapsed']:.0f}s")
        handlers.finish_recovery(STORE, session, recovery)
    done = "Finished all" if recovery.step >= recovery.settings.max_steps else "Stopped after"
    yield (figures.loss_figure(recovery.history),
           f"{done} {recovery.step} steps ({recovery.history[-1]['elapsed']:.0f}s) on "
           f"'{session.recovery_data}' data.{note} Press **Merge** to fold LoRA into the weights.")


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


@friendly(4)
@gpu
def run_compare(prompt, max_tokens, sample, seed, chat, request: gr.Request):
    session = session_of(request)
    settings = GenerationSettings(max_new_tokens=int(max_tokens), do_sample=bool(sample), seed=int(seed),
                                  chat_template=None if chat else False)
    settings.validate()
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("the prompt is empty: type something for the models to continue")
    for texts, rates, cached in handlers.compare_stream(STORE, session, prompt, settings):
        line = "  |  ".join(f"{name}: {rate}" + (" (cached)" if name in cached else "")
                            for name, rate in rates.items())
        if line:
            line = f"Decode speed, {handlers.SPEED_HOW}: " + line
        yield texts["original"], texts["pruned"], texts["pruned + LoRA"], line or "generating ..."


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


@friendly(4)
def run_export(which, request: gr.Request, progress=gr.Progress(track_tqdm=True)):
    archive, recipe, adapter, loader, hit = handlers.export(STORE, session_of(request), which, progress)
    note = f"Unzip and load it: this export has {loader}." + handlers.cache_note(hit)
    return archive, recipe, adapter, note


@friendly(2)
def run_export_gguf(which, precision, request: gr.Request, progress=gr.Progress(track_tqdm=True)):
    path, sentence, hit = handlers.export_gguf(STORE, session_of(request), which, precision, progress)
    return path, (f"{sentence}. Run it: `llama-cli -m {Path(path).name} -p \"{PAPER_PROMPT}\"`, or "
                  f"`ollama create` with a Modelfile `FROM ./{Path(path).name}`." + handlers.cache_note(hit))


@friendly(1)
def run_push(which, repo_id, token, request: gr.Request):
    return handlers.push_to_hub(STORE, session_of(request), which, repo_id, token)


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


def _controls(name: str) -> tuple:
    """The Prune tab's controls for a named recipe of pruner/recipes.py."""
    score_config, prune_config = RECIPES[name]
    return (prune_config.strategy, prune_config.attn_granularity, prune_config.attn_share is None,
            prune_config.attn_share or 0.0, prune_config.compensate, prune_config.allocation,
            score_config.criterion, score_config.aggregation)


RECIPE_LABELS = {"default": "default (best measured)", "llm-pruner": "llm-pruner (the paper)",
                 "flap": "flap", "wanda-sp": "wanda-sp", "minitron": "minitron", "shortgpt": "shortgpt (depth)"}
RECIPE_CONTROLS = {RECIPE_LABELS[name]: _controls(name) for name in RECIPES}
RECIPE_OF_LABEL = {label: name for name, label in RECIPE_LABELS.items()}


def preset_controls(name):
    """A recovery preset's steps, learning rate, distillation weight and the data it was measured on."""
    s = PRESETS[name]
    return s.max_steps, s.learning_rate, s.distill_weight, PRESET_DATA.get(name, "self")


def after_load(layer, granularity, group, mode, one_ratio, attn_share, a0, a1, m0, m1, amount,
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
    top = handlers.max_amount(STORE, session, mode, None if one_ratio else attn_share, a0, a1, m0, m1)
    mode_update, amount_update, advice = amount_updates(top, amount, info)
    return (zoom, fig, why, gr.update(value=["original"]), amount_update, mode_update, advice,
            text.notice("model", info), text.notice("structure", info))


def clear_errors(*lines):
    """After a successful load, the error lines other tabs showed before it (e.g. "no model loaded")
    no longer hold: clear them; any other line stays."""
    return tuple("" if isinstance(t, str) and t.startswith("**Error:**") else gr.skip() for t in lines)


def session_models(request: gr.Request):
    """Evaluate's model choice: every model this session has (ticked by default)."""
    try:
        have = list(session_of(request).models(STORE))
    except Exception:  # noqa: BLE001 - no session yet
        return gr.skip()
    return gr.update(value=have)


def apply_recipe(name):
    strategy, granularity, one, share, compensate, allocation, criterion, aggregation = RECIPE_CONTROLS[name]
    cite, what = RECIPE_NOTES[RECIPE_OF_LABEL[name]]
    note = (f"Recipe **{name}** ({cite}): {what}. Set: strategy {strategy}, attention groups {granularity}, "
            + ("one ratio for attention and MLP (attention's share is then not used)" if one
               else f"attention's share {share:g}")
            + f", compensation {'on' if compensate else 'off'}, per-layer ratios {allocation}. "
            f"It also set the **Importance** tab's criterion to {criterion} and aggregation to {aggregation}: "
            "Preview and Prune score with those.")
    return (strategy, granularity, one, gr.update(value=share, interactive=not one), compensate, allocation,
            criterion, aggregation, note)


def amount_updates(top: float, amount: float, info: dict) -> tuple:
    """(mode, amount, sentence) for a feasible maximum `top`: the slider kept valid (its maximum
    above its minimum, its value inside), or, where no share of parameters is feasible, the amount
    switched to a ratio of groups, with the reason."""
    advice = handlers.amount_advice(top, float(amount), info)
    if top < 2 * handlers.AMOUNT_MIN:
        return "ratio of groups", gr.update(maximum=handlers.AMOUNT_MAX, value=min(float(amount), 0.2)), advice
    return gr.skip(), gr.update(maximum=top, value=min(float(amount), top)), advice


def amount_bounds(mode, one_ratio, attn_share, a0, a1, m0, m1, amount, request: gr.Request):
    """The amount slider's maximum (what the chosen kinds and layer ranges can remove), its value
    kept inside it, and a sentence when the amount asked for cannot be reached."""
    try:
        session = session_of(request)
        top = handlers.max_amount(STORE, session, mode, None if one_ratio else attn_share, a0, a1, m0, m1)
    except Exception:  # noqa: BLE001 - no model yet: keep the static bounds
        return gr.skip(), gr.skip(), gr.skip(), gr.skip()
    mode_update, amount_update, advice = amount_updates(top, amount, session.info)
    # a ratio of groups is always feasible: keep the sentence that explained a switch to it
    status = advice if mode == "share of parameters" else gr.skip()
    return mode_update, amount_update, gr.update(interactive=not one_ratio), status


# ----------------------------------------------------------------------------- layout

def explain(words: str):
    return gr.Markdown(words, elem_classes="ps-explain")


def notice(words: str):
    """The tab's "what to notice" box: one or two sentences and a question for the class."""
    return gr.Markdown(words, elem_classes="ps-notice")


def build() -> gr.Blocks:
    prompts = [line.strip() for line in (ASSETS / "prompts.txt").read_text().splitlines() if line.strip()]
    with gr.Blocks(title="Pruning Studio") as demo:
        visitor = gr.BrowserState("", storage_key="pruning-studio-visitor", secret=FILES.secret())
        gr.Markdown("# Pruning Studio\nWatch **LLM-Pruner** structural pruning happen: find the coupled "
                    "structures of a decoder, score them, cut them out, recover with LoRA, and compare.",
                    elem_classes="ps-header")
        with gr.Tabs():
            # 1 ---------------------------------------------------------------- Model
            with gr.Tab("1 · Model"):
                explain("Load a decoder of a supported family: Llama, Mistral, Qwen2 / Qwen3, Gemma 1-3, Phi-3, "
                        "Granite, SmolLM2 / SmolLM3, OLMo 2. The built-in default (SmolLM2-135M-Instruct) works "
                        "offline: it is the Q4_1 GGUF copy shipped in a package, dequantized to float32, so "
                        "its weights (and numbers) differ slightly from the hub's bfloat16 original. A hub id "
                        "or a local folder works too. Loading another model replaces this session's work (the same "
                        "model again keeps it); a model another visitor already loaded is shared, not loaded "
                        "again.")
                with gr.Row():
                    source_kind = gr.Radio(["built-in default (SmolLM2-135M-Instruct)", "hub id or local folder"],
                                           value="built-in default (SmolLM2-135M-Instruct)", label="source")
                    custom = gr.Textbox("", label="hub id or folder", placeholder="HuggingFaceTB/SmolLM2-360M-Instruct")
                load_btn = gr.Button("Load model", variant="primary")
                load_status = gr.Markdown(elem_classes="ps-status")
                facts = gr.Dataframe(pd.DataFrame(columns=["property", "value"]), label="architecture",
                                     interactive=False)
                model_notice = notice(text.NOTICE["model"])
                with gr.Accordion("Server (for teachers): class cache and memory", open=False):
                    stats_btn = gr.Button("Refresh")
                    stats_table = gr.Dataframe(pd.DataFrame(columns=["figure", "value"]), interactive=False,
                                               label="the class cache and the server's memory")
            # 2 ---------------------------------------------------------------- Structure
            with gr.Tab("2 · Structure"):
                explain("LLM-Pruner's **dependency groups**: removing a neuron forces removing every neuron "
                        "wired to it. A KV head's k/v rows are read by the query heads that share it (an "
                        "out-degree dependency), and those heads' q rows and o_proj columns go with it "
                        "(in-degree). An MLP channel is one row of gate and up and one column of down. Each "
                        "colour below is one group: it is scored and removed as a unit.")
                layer = gr.Slider(0, 29, value=3, step=1, label="layer")
                structure_fig = gr.Plot(label="coupled structures of the layer")
                structure_table = gr.Dataframe(pd.DataFrame(columns=["group", "members", "parameters"]),
                                               label="groups and their parameters", interactive=False)
                gr.Markdown(text.DEPENDENCY, latex_delimiters=text.LATEX, elem_classes="ps-math")
                with gr.Row():
                    graph_kind = gr.Radio(list(handlers.GRANULARITIES), value="KV group", label="granularity",
                                          info="query head: the Prune tab's default attention unit")
                    graph_group = gr.Number(0, label="group", precision=0, minimum=0)
                graph_fig = gr.Plot(label="dependency graph of the layer", elem_id="dependency-graph")
                graph_text = gr.Markdown()
                structure_status = gr.Markdown(elem_classes="ps-status")
                structure_notice = notice(text.NOTICE["structure"])
            # 3 ---------------------------------------------------------------- Importance
            with gr.Tab("3 · Importance"):
                explain("Group importance on a few calibration samples: first-order Taylor |dL/dW · W| "
                        "(vector- or element-wise), second order with the Fisher diagonal (float32), or "
                        "magnitude / random baselines; member scores are aggregated over the group.")
                with gr.Row():
                    criterion = controls.dropdown(ScoreConfig, "criterion", SCORE_START.criterion,
                                                  choices=list(CRITERIA))
                    aggregation = controls.dropdown(ScoreConfig, "aggregation", SCORE_START.aggregation)
                    calib = gr.Dropdown(["builtin", "lambada", "wikitext2", "ptb"], value="builtin",
                                        label="calibration text")
                    samples = gr.Number(CALIBRATION_SAMPLES, label="samples", precision=0, minimum=1, maximum=256,
                                        info="LLM-Pruner: 10 x 64; 32 x 128 depends far less on the draw")
                    seq_len = gr.Number(CALIBRATION_LEN, label="tokens each", precision=0, minimum=8, maximum=1024)
                with gr.Accordion("The paper's formulas: criteria (Eq. 3-5) and aggregations", open=True,
                                  elem_id="formulas"):
                    gr.Markdown(text.CRITERIA, latex_delimiters=text.LATEX, elem_classes="ps-math")
                    gr.Markdown(text.AGGREGATIONS, latex_delimiters=text.LATEX, elem_classes="ps-math")
                with gr.Row():
                    score_btn = gr.Button("Score groups", variant="primary")
                    scale = gr.Radio(["linear", "log", "rank"], value="rank", label="colour")
                score_status = gr.Markdown()
                with gr.Row():
                    attn_map = gr.Plot(label="attention")
                    mlp_map = gr.Plot(label="MLP", elem_id="mlp-map")
                with gr.Row():
                    zoom_kind = gr.Radio(["mlp", "attn"], value="mlp", label="zoom into",
                                         info="one layer's groups, with the cut of the last preview / prune")
                    zoom_layer = gr.Slider(0, 29, value=3, step=1, label="layer")
                layer_fig = gr.Plot(label="one layer up close", elem_id="layer-fig")
                hist_fig = gr.Plot(label="score distribution")
                score_summary = gr.Dataframe(pd.DataFrame(columns=["kind", "min", "median", "max"]),
                                             label="score range per kind", interactive=False)
                with gr.Accordion("Compare two criteria or aggregations", open=False):
                    with gr.Row():
                        crit_b = gr.Dropdown(list(CRITERIA), value="l2", label="criterion B")
                        agg_b = gr.Dropdown(list(AGGREGATIONS), value="sum", label="aggregation B")
                        compare_kind = gr.Radio(["attn", "mlp"], value="mlp", label="heatmap")
                    compare_btn = gr.Button("Compare A (above) with B")
                    with gr.Row():
                        map_a = gr.Plot(label="A")
                        map_b = gr.Plot(label="B")
                    corr_fig = gr.Plot(label="rank correlation per layer")
                    disagree = gr.Dataframe(pd.DataFrame(columns=handlers.DISAGREE_COLUMNS),
                                            label="groups where A and B disagree most (rank within the layer)",
                                            interactive=False)
                    compare_status = gr.Markdown(elem_classes="ps-status")
                notice(text.NOTICE["importance"])
            # 4 ---------------------------------------------------------------- Prune
            with gr.Tab("4 · Prune"):
                explain("Choose how much to remove and where. **Preview** marks the groups that will go on "
                        "the heatmaps; **Prune** slices a copy of the model (the original stays intact) "
                        "and measures both.")
                gr.Markdown(DEFAULT_RECIPE_TEXT, elem_classes="ps-explain")
                with gr.Row():
                    recipe_name = gr.Radio(list(RECIPE_CONTROLS), value="default (best measured)",
                                           label="recipe")
                recipe_note = gr.Markdown()
                with gr.Accordion("Measured: the field's methods side by side on this model (bench/methods.py)",
                                  open=False, elem_id="methods"):
                    methods_table, methods_data = handlers.methods_results()
                    gr.Markdown(methods_table)
                    gr.Plot(figures.methods_figure(methods_data), label="bench/methods.py")
                with gr.Row():
                    mode = gr.Radio(["share of parameters", "ratio of groups"], value="share of parameters",
                                    label="amount is a")
                    amount = gr.Slider(handlers.AMOUNT_MIN, handlers.AMOUNT_MAX, value=START.target_params,
                                       step=handlers.AMOUNT_STEP,
                                       label="amount")
                    strategy = controls.radio(PruneConfig, "strategy", START.strategy)
                    scope = controls.radio(PruneConfig, "scope", START.scope)
                with gr.Row():
                    granularity = controls.radio(PruneConfig, "attn_granularity", START.attn_granularity)
                    one_ratio = gr.Checkbox(False, label="one ratio for attention and MLP (LLM-Pruner)")
                    attn_share = controls.slider(PruneConfig, "attn_share", START.attn_share, step=0.05)
                    compensate = controls.checkbox(PruneConfig, "compensate", START.compensate)
                    recompute = controls.checkbox(PruneConfig, "recompute_means", START.recompute_means)
                    allocation = controls.radio(PruneConfig, "allocation", START.allocation)
                with gr.Row():
                    attn_start = gr.Number(3, label="attention layers from", precision=0, minimum=0)
                    attn_end = gr.Number(28, label="to (exclusive)", precision=0)
                    mlp_start = gr.Number(3, label="MLP layers from", precision=0, minimum=0)
                    mlp_end = gr.Number(28, label="to (exclusive)", precision=0)
                    steps = controls.slider(PruneConfig, "iterative_steps", START.iterative_steps, step=1,
                                            maximum=5)
                with gr.Row():
                    preview_btn = gr.Button("Preview")
                    prune_btn = gr.Button("Prune", variant="primary")
                    contrast_btn = gr.Button("Contrast: unstructured magnitude pruning")
                    prune_cancel = gr.Button("Cancel")
                prune_status = gr.Markdown(elem_classes="ps-status")
                with gr.Row():
                    prune_attn_map = gr.Plot(label="attention (x = removed)")
                    prune_mlp_map = gr.Plot(label="MLP (x or red line = removed)", elem_id="prune-mlp-map")
                explain(f"Every figure below is measured one way on every tab: the quick perplexity is "
                        f"the **{handlers.QUICK_PPL}**; decoding speed is the **{handlers.SPEED_HOW}**.")
                before_after = gr.Dataframe(pd.DataFrame(columns=handlers.COMPARISON_COLUMNS),
                                            label="structured: before / after", interactive=False,
                                            elem_id="before-after")
                widths_fig = gr.Plot(label="kept widths per layer")
                contrast_table = gr.Dataframe(pd.DataFrame(columns=["metric", "original", "structured",
                                                                    "unstructured"]),
                                              label="structured vs unstructured, side by side", interactive=False,
                                              elem_id="contrast")
                contrast_status = gr.Markdown(elem_classes="ps-status")
                notice(text.NOTICE["prune"])
            # 5 ---------------------------------------------------------------- Recover
            with gr.Tab("5 · Recover"):
                explain("LoRA (r=8, alpha=16 on q,k,v,o,gate,up,down, like LLM-Pruner) on a copy of the "
                        "pruned model.\n\n**Data.** `lambada` (the `quick` and `thorough` presets): book "
                        "passages (LAMBADA's test split, a benchmark this page does not report), from the "
                        "data folder, the hub, or the first 600 passages shipped with the app (offline); the "
                        "status names the source. `self`: the original model's own answers to 64 built-in "
                        "instructions. The "
                        "paper instead trains on Alpaca's 50k instructions (`alpaca`, from the hub) for 2 "
                        "epochs. `builtin`: the project's calibration text (small).\n\n**Distillation.** "
                        "With a weight above 0, every step also runs the original model on the same tokens "
                        "and adds the KL divergence from its next-token distribution to the pruned model's, "
                        "so the pruned model learns to match all of the original's probabilities, not only "
                        "the one token in the text.")
                with gr.Row():
                    preset_name = gr.Dropdown(sorted(PRESETS), value="quick", label="preset")
                    rec_steps = controls.slider(LoraSettings, "max_steps", PRESETS["quick"].max_steps, step=1,
                                                maximum=max(p.max_steps for p in PRESETS.values()))
                    rec_lr = gr.Number(PRESETS["quick"].learning_rate, label="learning rate")
                    rec_distill = controls.slider(LoraSettings, "distill_weight", PRESETS["quick"].distill_weight,
                                                  step=0.1, maximum=2.0)
                    rec_data = gr.Dropdown(["self", "builtin", "lambada", "alpaca"], value=PRESET_DATA["quick"], label="data",
                                           info="the chosen preset's measured data is filled in")
                with gr.Row():
                    recover_btn = gr.Button("Start recovery", variant="primary")
                    stop_btn = gr.Button("Stop")
                    merge_btn = gr.Button("Merge")
                recover_status = gr.Markdown(elem_classes="ps-status")
                loss_fig = gr.Plot(label="loss")
                with gr.Accordion("Measured: perplexity against recovery time, per data and objective",
                                  open=False):
                    gr.Plot(figures.recovery_curve_figure(*handlers.recovery_curve_results()),
                            label="bench/recovery_curve.py", elem_id="recovery-curve")
                notice(text.NOTICE["recover"])
            # 6 ---------------------------------------------------------------- Compare
            with gr.Tab("6 · Compare"):
                explain("Same prompt, same decoding settings and seed for every model, streamed.")
                prompt = gr.Textbox(PAPER_PROMPT, label="prompt", lines=2)
                gr.Examples(prompts, inputs=prompt)
                with gr.Row():
                    max_tokens = gr.Slider(8, 256, value=64, step=8, label="max new tokens")
                    sample = gr.Checkbox(False, label="sample (else greedy)")
                    seed = gr.Number(0, label="seed", precision=0)
                    chat = gr.Checkbox(False, label="chat template")
                with gr.Row():
                    generate_btn = gr.Button("Generate", variant="primary")
                    generate_cancel = gr.Button("Cancel")
                with gr.Row():
                    out_original = gr.Textbox(label="original", lines=8, elem_classes="ps-gen")
                    out_pruned = gr.Textbox(label="pruned", lines=8, elem_classes="ps-gen")
                    out_lora = gr.Textbox(label="pruned + LoRA", lines=8, elem_classes="ps-gen")
                speed = gr.Markdown()
                notice(text.NOTICE["compare"])
            # 7 ---------------------------------------------------------------- Evaluate
            with gr.Tab("7 · Evaluate"):
                explain("The paper's Table 1, on a subset you choose: WikiText-2 / PTB perplexity "
                        "(consecutive 128-token windows; 32 windows = the quick figure of the other tabs) and "
                        "zero-shot accuracy scored like lm-evaluation-harness (acc_norm where it defines one), "
                        "in percent with its standard error.")
                with gr.Row():
                    which = gr.CheckboxGroup(["original", "pruned", "pruned + LoRA"],
                                             value=["original", "pruned", "pruned + LoRA"], label="models",
                                             info="every model of your session is ticked")
                    corpora = gr.CheckboxGroup(["wikitext2", "ptb"], value=["wikitext2"], label="perplexity")
                    tasks = gr.CheckboxGroup(list(TASKS), value=["piqa", "arc_easy"], label="zero-shot tasks")
                with gr.Row():
                    windows = gr.Slider(4, 512, value=32, step=4, label="perplexity windows")
                    limit = gr.Slider(10, 1000, value=50, step=10, label="items per task")
                with gr.Row():
                    eval_btn = gr.Button("Evaluate", variant="primary")
                    eval_cancel = gr.Button("Cancel")
                eval_table = gr.Dataframe(handlers.evaluation_display(None), label="results", interactive=False)
                eval_fig = gr.Plot(label="results", elem_id="eval-fig")
                eval_status = gr.Markdown(elem_classes="ps-status")
                notice(text.NOTICE["evaluate"])
            # 8 ---------------------------------------------------------------- Export
            with gr.Tab("8 · Export"):
                explain("Download a folder archive of safetensors + config + tokenizer that "
                        "`from_pretrained` loads (uniform widths: plain transformers; per-layer widths, "
                        "as the default recipe makes: `trust_remote_code=True` with the small "
                        "modeling_pruned.py the export carries, or `pruner.load_model`), the recipe as "
                        "JSON, and the LoRA adapter (peft format).")
                export_which = gr.Radio(["pruned", "pruned + LoRA"], value="pruned", label="model")
                export_btn = gr.Button("Export", variant="primary")
                with gr.Row():
                    model_file = gr.File(label="model (zip)")
                    recipe_file = gr.File(label="recipe.json")
                    adapter_file = gr.File(label="LoRA adapter (zip)")
                export_note = gr.Markdown()
                with gr.Row():
                    gguf_precision = gr.Radio(["f16", "f32"], value="f16", label="GGUF precision",
                                              info="llama.cpp / ollama / LM Studio; per-layer widths use "
                                                   "llama.cpp's 'deci' architecture (llama.cpp 2025+)")
                    gguf_btn = gr.Button("Export GGUF")
                    gguf_file = gr.File(label="model (GGUF)")
                gguf_note = gr.Markdown()
                notice(text.NOTICE["export"])
                with gr.Accordion("Push to the Hugging Face Hub", open=False):
                    repo_id = gr.Textbox("", label="repository", placeholder="your-name/smollm2-pruned")
                    token = gr.Textbox("", label="write token", type="password")
                    push_btn = gr.Button("Push")
                    push_status = gr.Markdown()

        recipe_name.change(apply_recipe, recipe_name,
                           [strategy, granularity, one_ratio, attn_share, compensate, allocation, criterion,
                            aggregation, recipe_note],
                           api_name="recipe")
        bounds_inputs = [mode, one_ratio, attn_share, attn_start, attn_end, mlp_start, mlp_end, amount]
        for control in (mode, one_ratio, attn_start, attn_end, mlp_start, mlp_end):
            control.change(amount_bounds, bounds_inputs, [mode, amount, attn_share, prune_status],
                           api_visibility="private")
        attn_share.release(amount_bounds, bounds_inputs, [mode, amount, attn_share, prune_status],
                           api_visibility="private")
        heavy = dict(concurrency_id=HEAVY, concurrency_limit=1)
        status_lines = [structure_status, score_status, compare_status, prune_status, contrast_status,
                        recover_status, speed, eval_status, export_note, gguf_note, push_status]
        load_btn.click(load_model, [source_kind, custom],
                       [facts, layer, structure_fig, structure_table,
                        attn_start, attn_end, mlp_start, mlp_end, compensate, load_status], api_name="load_model", **heavy
                       ).then(after_load, [layer, graph_kind, graph_group, mode, one_ratio, attn_share,
                                           attn_start, attn_end, mlp_start, mlp_end, amount],
                              [zoom_layer, graph_fig, graph_text, which, amount, mode, prune_status,
                               model_notice, structure_notice], api_visibility="private"
                       ).then(clear_errors, status_lines, status_lines, api_visibility="private")
        graph_inputs = [layer, graph_kind, graph_group]
        layer.release(show_structure, layer, [structure_fig, structure_table, structure_status], api_name="structure"
                      ).then(show_graph, graph_inputs, [graph_fig, graph_text, structure_status],
                             api_visibility="private")
        graph_kind.change(show_graph, graph_inputs, [graph_fig, graph_text, structure_status], api_name="graph")
        graph_group.submit(show_graph, graph_inputs, [graph_fig, graph_text, structure_status],
                           api_visibility="private")
        score_btn.click(run_score, [criterion, aggregation, calib, samples, seq_len, scale, zoom_kind, zoom_layer],
                        [attn_map, mlp_map, score_summary, layer_fig, hist_fig, score_status], api_name="score",
                        **heavy)
        zoom_kind.change(zoom, [zoom_kind, zoom_layer], [layer_fig, hist_fig, score_status], api_name="zoom")
        zoom_layer.release(zoom, [zoom_kind, zoom_layer], [layer_fig, hist_fig, score_status],
                           api_visibility="private")
        scale.change(redraw, scale, [attn_map, mlp_map, score_status], api_name="redraw")
        compare_btn.click(compare_scores, [criterion, aggregation, crit_b, agg_b, calib, samples, seq_len,
                                           compare_kind, scale],
                          [map_a, map_b, corr_fig, disagree, compare_status], api_name="compare_scores", **heavy)
        prune_inputs = [mode, amount, scope, strategy, granularity, one_ratio, attn_share, compensate,
                        recompute, allocation, attn_start, attn_end, mlp_start, mlp_end, steps, criterion,
                        aggregation, scale]
        preview_btn.click(preview_prune, prune_inputs, [prune_attn_map, prune_mlp_map, prune_status],
                          api_name="preview", **heavy)
        prune_event = prune_btn.click(run_prune, prune_inputs,
                        [before_after, widths_fig, prune_attn_map, prune_mlp_map, prune_status],
                        api_name="prune", **heavy)
        prune_event.then(session_models, None, which, api_visibility="private")
        contrast_btn.click(run_contrast, amount, [contrast_table, contrast_status], api_name="contrast", **heavy)
        preset_name.change(preset_controls, preset_name, [rec_steps, rec_lr, rec_distill, rec_data],
                           api_visibility="private")
        recover_btn.click(run_recover, [preset_name, rec_steps, rec_lr, rec_distill, rec_data],
                                          [loss_fig, recover_status], api_name="recover", **heavy)
        stop_btn.click(stop_recover, None, recover_status, api_name="stop_recover")
        merge_btn.click(run_merge, None, recover_status, api_name="merge", **heavy).then(
            session_models, None, which, api_visibility="private")
        generate_event = generate_btn.click(run_compare, [prompt, max_tokens, sample, seed, chat],
                           [out_original, out_pruned, out_lora, speed], api_name="compare", **heavy)
        eval_event = eval_btn.click(run_evaluate, [which, corpora, tasks, windows, limit],
                                    [eval_table, eval_fig, eval_status], api_name="evaluate", **heavy)
        # cancelling stops the job between steps; the session keeps what was there before
        for button, event in ((prune_cancel, prune_event), (generate_cancel, generate_event),
                              (eval_cancel, eval_event)):
            button.click(None, None, None, cancels=[event], api_visibility="private")
        export_btn.click(run_export, export_which, [model_file, recipe_file, adapter_file, export_note],
                         api_name="export", **heavy)
        gguf_btn.click(run_export_gguf, [export_which, gguf_precision], [gguf_file, gguf_note],
                       api_name="export_gguf", **heavy)
        push_btn.click(run_push, [export_which, repo_id, token], push_status, api_name="push")
        # the visitor's key lives in the browser: a reload finds the same session
        panels = [facts, layer, structure_fig, structure_table, attn_map, mlp_map, score_summary, zoom_layer,
                  before_after, widths_fig, prune_attn_map, prune_mlp_map, loss_fig, eval_table, eval_fig, which,
                  mode, amount, attn_start, attn_end, mlp_start, mlp_end, load_status]
        demo.load(restore, visitor, [visitor] + panels, api_visibility="private")
        stats_btn.click(server_table, None, stats_table, api_name="server_table")
        gr.api(server_stats, api_name="server_stats")
        gr.api(reconnect, api_name="reconnect")
    demo.queue(default_concurrency_limit=4)
    return demo


def launch_kwargs() -> dict:
    """Theme and CSS (Gradio 6 takes them at launch)."""
    theme = gr.themes.Soft(primary_hue="indigo", secondary_hue="amber", neutral_hue="slate")
    return {"theme": theme, "css_paths": [str(ASSETS / "style.css")]}


demo = build()

def main() -> None:
    """Serve the dashboard (the `pruning-studio` console script and `python app.py`)."""
    if warm_start_enabled():      # walk the default lesson once so a class finds it cached
        start_warm_start(lambda: getattr(demo, "local_url", None), log.warning)
    demo.launch(server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"), **launch_kwargs())


if __name__ == "__main__":
    main()
