"""8 · Export: a folder archive that `from_pretrained` loads, the recipe, the LoRA adapter, a GGUF
for llama.cpp, and a push to the Hub."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from components import handlers
from components import lesson_text as text
from components.server import HEAVY, STORE, friendly, session_of
from components.tabs.common import Tab, explain, notice
from pruner.generate import PAPER_PROMPT

TITLE = "8 · Export"


def layout() -> Tab:
    t = Tab()
    explain("Download a folder archive of safetensors + config + tokenizer that "
            "`from_pretrained` loads (uniform widths: plain transformers; per-layer widths, "
            "as the default recipe makes: `trust_remote_code=True` with the small "
            "modeling_pruned.py the export carries, or `pruner.load_model`), the recipe as "
            "JSON, and the LoRA adapter (peft format).")
    t.which = gr.Radio(["pruned", "pruned + LoRA"], value="pruned", label="model")
    t.export_btn = gr.Button("Export", variant="primary")
    with gr.Row():
        t.model_file = gr.File(label="model (zip)")
        t.recipe_file = gr.File(label="recipe.json")
        t.adapter_file = gr.File(label="LoRA adapter (zip)")
    t.note = gr.Markdown()
    with gr.Row():
        t.gguf_precision = gr.Radio(["f16", "f32"], value="f16", label="GGUF precision",
                                    info="llama.cpp / ollama / LM Studio; per-layer widths use "
                                         "llama.cpp's 'deci' architecture (llama.cpp 2025+)")
        t.gguf_btn = gr.Button("Export GGUF")
        t.gguf_file = gr.File(label="model (GGUF)")
    t.gguf_note = gr.Markdown()
    notice(text.NOTICE["export"])
    with gr.Accordion("Push to the Hugging Face Hub", open=False):
        t.repo_id = gr.Textbox("", label="repository", placeholder="your-name/smollm2-pruned")
        t.token = gr.Textbox("", label="write token", type="password")
        t.push_btn = gr.Button("Push")
        t.push_status = gr.Markdown()
    return t


def wire(ui) -> None:
    t = ui.export
    t.export_btn.click(run_export, t.which, [t.model_file, t.recipe_file, t.adapter_file, t.note],
                       api_name="export", **HEAVY)
    t.gguf_btn.click(run_export_gguf, [t.which, t.gguf_precision], [t.gguf_file, t.gguf_note],
                     api_name="export_gguf", **HEAVY)
    t.push_btn.click(run_push, [t.which, t.repo_id, t.token], t.push_status, api_name="push")


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
