"""Page controls built from config fields (pruner/options.py): label, choices, bounds and the
info text come from the field, the value from the recipe the page starts with. A test compares
every bound control with its field."""

from __future__ import annotations

import gradio as gr

from pruner.options import options

BOUND: dict[int, tuple[type, str]] = {}      # id(component) -> (config class, field): for the drift test


def _bind(component, config_cls, name: str):
    BOUND[id(component)] = (config_cls, name)
    return component


def radio(config_cls, name: str, value, **kw):
    opt = options(config_cls)[name]
    kw.setdefault("info", opt.help)
    return _bind(gr.Radio(list(opt.choices), value=value, label=opt.label, **kw), config_cls, name)


def dropdown(config_cls, name: str, value, choices: list | None = None, **kw):
    """`choices`: the page's subset of the field's (aliases left out), or the page's offer for a
    free-form field."""
    opt = options(config_cls)[name]
    assert choices is None or opt.choices is None or set(choices) <= set(opt.choices)
    kw.setdefault("info", opt.help)
    return _bind(gr.Dropdown(list(choices or opt.choices), value=value, label=opt.label, **kw), config_cls, name)


def number(config_cls, name: str, value, **kw):
    """A whole number within the field's bounds."""
    opt = options(config_cls)[name]
    return _bind(gr.Number(value, label=opt.label, info=opt.help, precision=0, minimum=opt.bounds.lo,
                           maximum=opt.bounds.hi, **kw), config_cls, name)


def checkbox(config_cls, name: str, value, **kw):
    opt = options(config_cls)[name]
    return _bind(gr.Checkbox(bool(value), label=opt.label, info=opt.help, **kw), config_cls, name)


def slider(config_cls, name: str, value, step: float, minimum: float | None = None,
           maximum: float | None = None, **kw):
    """A slider within the field's bounds (narrowed by minimum / maximum where the page offers less)."""
    opt = options(config_cls)[name]
    lo = opt.bounds.lo if minimum is None else minimum
    hi = opt.bounds.hi if maximum is None else maximum
    return _bind(gr.Slider(lo, hi, value=value, step=step, label=opt.label, info=opt.info(), **kw),
                 config_cls, name)
