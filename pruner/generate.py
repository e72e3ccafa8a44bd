"""Streamed generation with fixed decoding settings, so models can be compared side by side."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Iterator

import torch

from .models import context_length

PAPER_PROMPT = "The Leaning Tower of Pisa is known for"
MAX_NEW_TOKENS_LIMIT = 512
MAX_PROMPT_TOKENS = 2048        # a pasted book would fill a Space's memory before any token is written
MAX_PROMPT_CHARS = 16 * MAX_PROMPT_TOKENS      # refused before tokenizing (English: ~4 characters a token)


@dataclass
class GenerationSettings:
    max_new_tokens: int = 64
    do_sample: bool = False          # greedy by default: identical for every model compared
    temperature: float = 0.7
    top_p: float = 0.9
    repetition_penalty: float = 1.1
    seed: int = 0
    chat_template: bool | None = None   # None = use the tokenizer's chat template when it has one

    def validate(self) -> None:
        if not 1 <= int(self.max_new_tokens) <= MAX_NEW_TOKENS_LIMIT:
            raise ValueError(f"max_new_tokens must be between 1 and {MAX_NEW_TOKENS_LIMIT}, "
                             f"got {self.max_new_tokens}")
        if self.do_sample and not (self.temperature > 0 and 0 < self.top_p <= 1):
            raise ValueError("sampling needs temperature > 0 and 0 < top_p <= 1")


def encode_prompt(tokenizer, prompt: str, use_chat: bool | None = None) -> torch.Tensor:
    """(1, n) prompt ids; wrapped in the chat template when asked (None: when one exists)."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("the prompt is empty: type something for the model to continue")
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if use_chat is None:
        use_chat = has_template
    if use_chat and has_template:
        messages = [{"role": "user", "content": prompt}]
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)["input_ids"]
        return ids
    return tokenizer(prompt, return_tensors="pt").input_ids


def prompt_ids(model, tokenizer, prompt: str, settings: GenerationSettings) -> torch.Tensor:
    """(1, n) prompt ids as `stream` feeds them, checked: at most MAX_PROMPT_TOKENS, and room left
    in the model's context for `max_new_tokens` (positions past it are undefined for any model)."""
    if isinstance(prompt, str) and len(prompt) > MAX_PROMPT_CHARS:
        raise ValueError(f"the prompt is {len(prompt):,} characters; at most {MAX_PROMPT_CHARS:,} characters "
                         f"and {MAX_PROMPT_TOKENS} tokens are read here: shorten it")
    ids = encode_prompt(tokenizer, prompt, settings.chat_template)
    n, new = ids.shape[1], int(settings.max_new_tokens)
    if n > MAX_PROMPT_TOKENS:
        raise ValueError(f"the prompt is {n} tokens; at most {MAX_PROMPT_TOKENS} are read here: shorten it")
    context = context_length(model)
    if context is not None and n + new > context:
        fix = "shorten the prompt" + (f" or ask for at most {context - n} new tokens" if n < context else "")
        raise ValueError(f"the prompt ({n} tokens) and {new} new tokens exceed this model's context of "
                         f"{context} positions: {fix}")
    return ids


def _generate_kwargs(tokenizer, settings: GenerationSettings) -> dict:
    kw = dict(max_new_tokens=int(settings.max_new_tokens), do_sample=settings.do_sample,
              repetition_penalty=settings.repetition_penalty,
              pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
    if settings.do_sample:
        kw.update(temperature=settings.temperature, top_p=settings.top_p)
    else:
        kw.update(temperature=None, top_p=None, top_k=None)
    return kw


def stream(model, tokenizer, prompt: str, settings: GenerationSettings | None = None) -> Iterator[dict]:
    """Yield {"text", "tokens", "seconds", "tokens_per_s", "done"} as new text arrives."""
    from transformers import TextIteratorStreamer

    settings = settings or GenerationSettings()
    settings.validate()
    device = next(model.parameters()).device
    ids = prompt_ids(model, tokenizer, prompt, settings).to(device)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    torch.manual_seed(settings.seed)
    outcome = {}

    def run():
        try:
            with torch.no_grad():
                outcome["ids"] = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                                streamer=streamer, **_generate_kwargs(tokenizer, settings))
        except Exception as err:  # surfaced to the caller below
            outcome["error"] = err
            streamer.end()

    start = time.perf_counter()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    text, pieces = "", 0
    for piece in streamer:
        text += piece
        pieces += 1
        elapsed = time.perf_counter() - start
        yield {"text": text, "tokens": pieces, "seconds": elapsed,
               "tokens_per_s": pieces / elapsed if elapsed > 0 else 0.0, "done": False}
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    elapsed = time.perf_counter() - start
    n_new = int(outcome["ids"].shape[1] - ids.shape[1])
    yield {"text": text, "tokens": n_new, "seconds": elapsed,
           "tokens_per_s": n_new / elapsed if elapsed > 0 else 0.0, "done": True}


def generate_text(model, tokenizer, prompt: str, settings: GenerationSettings | None = None) -> dict:
    """The final item of `stream`: the whole generation with its timing."""
    last = None
    for last in stream(model, tokenizer, prompt, settings):
        pass
    return last
