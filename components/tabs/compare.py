"""6 · Compare: original, pruned and pruned + LoRA continue one prompt with the same decoding
settings and seed, streamed side by side, with their decode speeds timed in one run."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from components import handlers
from components import lesson_text as text
from components.server import HEAVY, STORE, friendly, gpu, session_of
from components.tabs.common import Tab, explain, notice
from pruner.generate import MAX_PROMPT_CHARS, PAPER_PROMPT, GenerationSettings

PROMPTS = Path(__file__).resolve().parent.parent / "assets" / "prompts.txt"

TITLE = "6 · Compare"


def layout() -> Tab:
    t = Tab()
    explain("Same prompt, same decoding settings and seed for every model, streamed.")
    t.prompt = gr.Textbox(PAPER_PROMPT, label="prompt", lines=2, max_length=MAX_PROMPT_CHARS)
    gr.Examples([line.strip() for line in PROMPTS.read_text().splitlines() if line.strip()], inputs=t.prompt)
    with gr.Row():
        t.max_tokens = gr.Slider(8, 256, value=64, step=8, label="max new tokens")
        t.sample = gr.Checkbox(False, label="sample (else greedy)")
        t.seed = gr.Number(0, label="seed", precision=0)
        t.chat = gr.Checkbox(False, label="chat template")
    with gr.Row():
        t.generate_btn = gr.Button("Generate", variant="primary")
        t.cancel = gr.Button("Cancel")
    with gr.Row():
        t.out_original = gr.Textbox(label="original", lines=8, elem_classes="ps-gen")
        t.out_pruned = gr.Textbox(label="pruned", lines=8, elem_classes="ps-gen")
        t.out_lora = gr.Textbox(label="pruned + LoRA", lines=8, elem_classes="ps-gen")
    t.speed = gr.Markdown()
    notice(text.NOTICE["compare"])
    return t


def wire(ui) -> None:
    t = ui.compare
    event = t.generate_btn.click(run_compare, [t.prompt, t.max_tokens, t.sample, t.seed, t.chat],
                                 [t.out_original, t.out_pruned, t.out_lora, t.speed], api_name="compare", **HEAVY)
    # cancelling stops the job between steps; the session keeps what was there before
    t.cancel.click(None, None, None, cancels=[event], api_visibility="private")


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
