"""The server's shared state and the wrappers every event goes through: one class cache
(`STORE`), the visitors' sessions (`REGISTRY`), their steps on disk (`FILES`), and

- `friendly`: any failure becomes the event's status line and a toast, other outputs untouched;
- `persisted`: the visitor's steps are saved after the event (a restart replays them);
- `gpu`: ZeroGPU's decorator on Spaces, a no-op elsewhere;
- `form`: an event whose inputs are named fields (one API parameter each) handed over as one dict.

The tab modules (components/tabs/) bind controls and events; the engine work is in handlers.py.
"""

from __future__ import annotations

import functools
import inspect
import logging
import traceback

import gradio as gr
import torch

from components import handlers
from components.persist import SessionFiles
from components.session import SessionError, SessionRegistry
from components.spill import Spill
from components.store import CapacityError, Store
from pruner.data import DataUnavailableError
from pruner.models import ModelLoadError
from pruner.resources import return_large_frees_to_os, server_threads

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
HEAVY = dict(concurrency_id="heavy", concurrency_limit=1)   # one slot shared by everything that runs a model

try:  # Hugging Face Spaces (ZeroGPU): GPU work runs inside @spaces.GPU and returns CPU objects
    import spaces

    gpu = spaces.GPU(duration=120)
except ImportError:
    def gpu(fn):
        return fn


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


def form(fields: list[str]):
    """An event taking one input per name in `fields` (each a named API parameter: a client may
    give any of them by name) and handing them to `fn` as one dict, before its other parameters
    (request, progress)."""
    def wrap(fn):
        named = [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in fields]
        signature = inspect.Signature(named + list(inspect.signature(fn).parameters.values())[1:])

        @functools.wraps(fn)
        def event(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            values = {name: bound.arguments.pop(name) for name in fields}
            return fn(values, **bound.arguments)

        del event.__wrapped__          # gradio reads this signature, not fn's
        event.__signature__ = signature
        return event
    return wrap
