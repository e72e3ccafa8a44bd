"""Pruning Studio: see LLM-Pruner structural pruning happen, in the browser.

    python app.py            # serves http://127.0.0.1:7860 on the built-in default model

Tabs follow the lesson: Model, Structure, Importance, Prune, Recover, Compare, Evaluate, Export,
one module each in components/tabs/. This file puts them on one page and redraws a returning
visitor's session. Every event has a named API endpoint (see README: driving the lesson with
gradio_client).
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from types import SimpleNamespace

import gradio as gr

from components import handlers
from components.lesson import start_warm_start, warm_start_enabled
from components.server import FILES, REGISTRY, STORE, log, message_of  # noqa: F401 - STORE: the tests' handle
from components.tabs import TABS, prune

ASSETS = Path(__file__).resolve().parent / "components" / "assets"


# ----------------------------------------------------------------------------- a returning visitor

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
            gr.update(value=parts["models"]), *prune.restored_controls(parts["prune_controls"], session.info),
            message)


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


# ----------------------------------------------------------------------------- the page

def build() -> gr.Blocks:
    """Every tab laid out (components/tabs/), then every tab's events wired: `ui.<tab>.<name>`."""
    with gr.Blocks(title="Pruning Studio") as demo:
        visitor = gr.BrowserState("", storage_key="pruning-studio-visitor", secret=FILES.secret())
        gr.Markdown("# Pruning Studio\nWatch **LLM-Pruner** structural pruning happen: find the coupled "
                    "structures of a decoder, score them, cut them out, recover with LoRA, and compare.",
                    elem_classes="ps-header")
        ui = SimpleNamespace()
        with gr.Tabs():
            for name, module in TABS.items():
                with gr.Tab(module.TITLE):
                    setattr(ui, name, module.layout())
        for module in TABS.values():
            module.wire(ui)
        # the visitor's key lives in the browser: a reload finds the same session
        m, s, i, p, r, e = ui.model, ui.structure, ui.importance, ui.prune, ui.recover, ui.evaluate
        panels = [m.facts, s.layer, s.structure_fig, s.structure_table, i.attn_map, i.mlp_map, i.score_summary,
                  i.zoom_layer, p.before_after, p.widths_fig, p.attn_map, p.mlp_map, r.loss_fig, e.table, e.fig,
                  e.which, p.unit, p.amount, p.attn_start, p.attn_end, p.mlp_start, p.mlp_end, m.status]
        demo.load(restore, visitor, [visitor] + panels, api_visibility="private")
        gr.api(reconnect, api_name="reconnect")
    demo.queue(default_concurrency_limit=4)
    return demo


ENDPOINT_NOTES = {    # what the table of endpoints says beside the generated parameters
    "/load_model": "source_kind: the built-in default or \"hub id or local folder\" (then `custom`)",
    "/graph": "granularity: KV group, query head, MLP channel, hidden channel",
    "/zoom": "one layer up close and the histograms",
    "/recipe": "sets the Prune tab's controls to a named recipe",
    "/preview": "the Prune tab's form: PruneConfig's fields by name, one_ratio (no budget split), the layer "
                "ranges, and the Importance tab's criterion / aggregation / colour scale",
    "/prune": "as /preview",
    "/contrast": "a table with original, structured (this session's pruned model) and unstructured side by side",
    "/recover": "data_source: \"self\" stands in where book passages are unavailable",
    "/server_stats": "cache hits / misses, entries, GB used of the memory budget, sessions, models moved to "
                     "disk and back (JSON)",
    "/server_table": "the same figures as a table with plain labels (the page's *Server* view)",
    "/reconnect": "an API client takes over the session of an earlier connection (its session hash)",
}


def api_table(demo_: gr.Blocks) -> str:
    """The README's table of named endpoints, their keyword arguments and defaults, read off the
    page itself (tests/test_options.py fails when the README's copy drifts)."""
    rows = ["| endpoint | keyword arguments (default) |", "|---|---|"]
    for name, spec in demo_.get_api_info()["named_endpoints"].items():
        args = ", ".join(f"`{p['parameter_name']}` ({json.dumps(p.get('parameter_default'), ensure_ascii=False)})"
                         for p in spec["parameters"]) or "none"
        note = ENDPOINT_NOTES.get(name)
        rows.append(f"| `{name}` | {args}{'; ' + note if note else ''} |")
    return "\n".join(rows)


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
