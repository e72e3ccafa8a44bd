"""What every tab's layout uses: the explanation and "what to notice" boxes, and `Tab`, the
named components of one tab."""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr


class Tab(SimpleNamespace):
    """One tab's components by name (`ui.prune.amount`)."""


def explain(words: str):
    return gr.Markdown(words, elem_classes="ps-explain")


def notice(words: str):
    """The tab's "what to notice" box: one or two sentences and a question for the class."""
    return gr.Markdown(words, elem_classes="ps-notice")
