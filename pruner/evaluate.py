"""Evaluation like the paper: perplexity (LLM-Pruner's protocol) and zero-shot multiple choice
(lm-evaluation-harness's log-likelihood scoring), plus before/after model statistics."""

from __future__ import annotations

import math
import statistics
import time

import numpy as np
import torch
from tqdm.auto import tqdm

from .data import find_text
from .models import context_length
from .resources import reusing_freed_memory
from .tasks import Doc, find_task

_TOKENIZED: dict = {}   # (tokenizer id, corpus, data dir) -> (1-D ids, origin); tokenising takes seconds


def _device(model) -> torch.device:
    return next(model.parameters()).device


def corpus_ids(tokenizer, corpus: str, data_dir_path=None) -> torch.Tensor:
    """The whole corpus tokenised once: rows joined with "\\n\\n" (LLM-Pruner's get_loaders)."""
    return tokenized_corpus(tokenizer, corpus, data_dir_path)[0]


def tokenized_corpus(tokenizer, corpus: str, data_dir_path=None) -> tuple[torch.Tensor, str]:
    """(1-D token ids of the corpus, where its text came from), cached per tokenizer and folder."""
    key = (getattr(tokenizer, "name_or_path", ""), len(tokenizer), corpus, str(data_dir_path))
    if key not in _TOKENIZED:
        rows, origin = find_text(corpus, data_dir_path)
        _TOKENIZED[key] = tokenizer("\n\n".join(rows), return_tensors="pt").input_ids[0], origin
    return _TOKENIZED[key]


@torch.no_grad()
@reusing_freed_memory()
def perplexity(model, tokenizer, corpus: str = "wikitext2", seq_len: int = 128,
               max_windows: int | None = None, batch_size: int = 8, data_dir_path=None,
               progress: bool = True) -> dict:
    """exp(mean token NLL) over consecutive `seq_len`-token windows of the tokenised corpus.

    Returns {"ppl", "windows", "tokens", "seq_len", "data"}; `max_windows` takes the first N
    windows (fewer where the text holds fewer: a shipped slice); "data" names where the text came from.
    """
    ids, origin = tokenized_corpus(tokenizer, corpus, data_dir_path)
    n = ids.numel() // seq_len
    if max_windows:
        n = min(n, int(max_windows))
    if n == 0:
        raise ValueError(f"{corpus} has fewer than seq_len={seq_len} tokens")
    windows = ids[: n * seq_len].view(n, seq_len)                      # (n, seq_len)
    device, nll, count = _device(model), 0.0, 0
    for start in tqdm(range(0, n, batch_size), desc=f"ppl {corpus}", disable=not progress,
                      leave=False):
        batch = windows[start: start + batch_size].to(device)          # (b, seq_len)
        logits = model(input_ids=batch, use_cache=False).logits[:, :-1].float()
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten(),
                                                 reduction="sum")
        nll += loss.item()
        count += batch[:, 1:].numel()
    return {"ppl": math.exp(nll / count), "windows": n, "tokens": count, "seq_len": seq_len, "data": origin}


# ----------------------------------------------------------------------------- zero-shot

def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's split: trailing context spaces move to the continuation, the continuation's
    tokens are those of (context + continuation) past the context's own tokens."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        continuation, context = context[-spaces:] + continuation, context[:-spaces]
    whole = tokenizer(context + continuation, add_special_tokens=False).input_ids
    ctx = tokenizer(context, add_special_tokens=False).input_ids
    if not ctx:
        eos = tokenizer.eos_token_id
        return [eos], whole
    return ctx, whole[len(ctx):]


@torch.no_grad()
@reusing_freed_memory()
def loglikelihoods(model, tokenizer, requests: list[tuple[str, str]], batch_size: int = 16,
                   max_length: int | None = None, progress: bool = True, desc: str = "") -> list[float]:
    """Sum of continuation token log-probs for each (context, continuation)."""
    max_length = max_length or context_length(model) or 2048
    encoded = []
    for context, continuation in requests:
        ctx, cont = encode_pair(tokenizer, context, continuation)
        tokens = (ctx + cont)[-(max_length + 1):]
        encoded.append((tokens[:-1], len(cont), tokens[1:][-len(cont):]))
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i][0]))
    out = [0.0] * len(encoded)
    device, head = _device(model), model.get_output_embeddings()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for start in tqdm(range(0, len(order), batch_size), desc=desc or "loglikelihood",
                      disable=not progress, leave=False):
        idx = order[start: start + batch_size]
        width = max(len(encoded[i][0]) for i in idx)
        batch = torch.full((len(idx), width), pad, dtype=torch.long)
        for row, i in enumerate(idx):
            inp = encoded[i][0]
            batch[row, : len(inp)] = torch.tensor(inp)
        # right padding: causal attention never lets a later pad change earlier positions
        hidden = model.model(input_ids=batch.to(device), use_cache=False).last_hidden_state  # (b, width, H)
        rows = [hidden[row, len(encoded[i][0]) - encoded[i][1]: len(encoded[i][0])]
                for row, i in enumerate(idx)]
        # the vocabulary projection only where a continuation token is predicted
        logprobs = head(torch.cat(rows)).float().log_softmax(-1)               # (sum n_cont, V)
        targets = torch.tensor([t for i in idx for t in encoded[i][2]], device=device)
        picked = logprobs.gather(-1, targets[:, None]).squeeze(-1).split([encoded[i][1] for i in idx])
        for i, values in zip(idx, picked):
            out[i] = values.sum().item()
    return out


def _stderr(values: np.ndarray) -> float:
    """lm-eval's mean_stderr: sample standard deviation / sqrt(n)."""
    return float(np.std(values, ddof=1) / math.sqrt(len(values))) if len(values) > 1 else float("nan")


def multiple_choice(model, tokenizer, task: str, limit: int | None = None, batch_size: int = 16,
                    data_dir_path=None, progress: bool = True, docs: list[Doc] | None = None) -> dict:
    """acc and acc_norm (log-likelihood / continuation length in characters) with stderrs, the
    number of documents and where they came from ("data")."""
    origin = "given documents"
    if docs is None:
        docs, origin = find_task(task, data_dir_path, limit)
    requests = [(ctx, cont) for d in docs for ctx, cont in zip(d.contexts, d.continuations)]
    lls = loglikelihoods(model, tokenizer, requests, batch_size, progress=progress, desc=task)
    acc, acc_norm, pos = [], [], 0
    for d in docs:
        scores = np.array(lls[pos: pos + len(d.continuations)])
        pos += len(d.continuations)
        lengths = np.array([float(len(t)) for t in d.choice_texts])
        acc.append(float(np.argmax(scores) == d.gold))
        acc_norm.append(float(np.argmax(scores / lengths) == d.gold))
    acc, acc_norm = np.array(acc), np.array(acc_norm)
    result = {"acc": float(acc.mean()), "acc_stderr": _stderr(acc), "n": len(docs), "data": origin}
    if task != "winogrande":   # partial scoring shares one continuation: acc_norm is not defined
        result.update(acc_norm=float(acc_norm.mean()), acc_norm_stderr=_stderr(acc_norm))
    return result


def evaluate(model, tokenizer, ppl: list[str] = (), tasks: list[str] = (), seq_len: int = 128,
             max_windows: int | None = None, limit: int | None = None, batch_size: int = 8,
             data_dir_path=None, progress: bool = True, on_part=None) -> dict:
    """{"ppl": {corpus: value}, "acc": {task: acc_norm or acc}, "details": {...}}.

    on_part: optional callable(index, total, name) before each corpus and task (for UIs).

    "acc" holds the figure the paper reports: acc_norm where lm-eval defines it for the task
    (hellaswag, arc, openbookqa, piqa), plain acc for boolq, winogrande and copa.
    """
    model.eval()
    out = {"ppl": {}, "acc": {}, "details": {}}
    parts = list(ppl) + list(tasks)

    def starting(name):
        if on_part:
            on_part(parts.index(name), len(parts), name)
    for corpus in ppl:
        starting(corpus)
        res = perplexity(model, tokenizer, corpus, seq_len, max_windows, batch_size, data_dir_path, progress)
        out["ppl"][corpus] = res["ppl"]
        out["details"][corpus] = res
    for task in tasks:
        starting(task)
        res = multiple_choice(model, tokenizer, task, limit, 2 * batch_size, data_dir_path, progress)
        out["acc"][task] = res["acc_norm"] if task in NORMED_TASKS else res["acc"]
        out["details"][task] = res
    if out["acc"]:
        out["acc_mean"] = float(np.mean(list(out["acc"].values())))
    return out


NORMED_TASKS = ("hellaswag", "arc_easy", "arc_challenge", "openbookqa", "piqa")


# ----------------------------------------------------------------------------- statistics

@torch.no_grad()
def peak_forward_bytes(model, seq_len: int = 128) -> int:
    """Peak memory above the weights during one forward of `seq_len` tokens (CUDA allocator
    peak on GPU, sampled RSS on CPU)."""
    from .stats import PeakMemory

    ids = torch.zeros(1, seq_len, dtype=torch.long, device=_device(model))
    with PeakMemory(_device(model)) as mem:
        model(input_ids=ids, use_cache=False)
    return int(mem.peak_above_start)


@torch.no_grad()
def decode_rates(models: list, tokenizer, prompt: str = "The Leaning Tower of Pisa is known for",
                 new_tokens: int = 32, repeats: int = 3) -> list[list[float]]:
    """Greedy tokens/s for exactly `new_tokens` new tokens, `repeats` runs per model after a
    warm-up. Several models take turns run by run, so a change in the machine's load hits all of
    them alike (side-by-side comparisons)."""
    inputs = []
    for model in models:
        ids = tokenizer(prompt, return_tensors="pt").input_ids.to(_device(model))
        inputs.append((ids, dict(do_sample=False, attention_mask=torch.ones_like(ids),
                                 pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)))
    rates = [[] for _ in models]
    for run in range(repeats + 1):
        n = 2 if run == 0 else new_tokens                  # run 0: warm-up
        for i, (model, (ids, kw)) in enumerate(zip(models, inputs)):
            cuda = ids.device.type == "cuda"
            if cuda:
                torch.cuda.synchronize(ids.device)
            start = time.perf_counter()
            model.generate(ids, max_new_tokens=n, min_new_tokens=n, **kw)
            if cuda:
                torch.cuda.synchronize(ids.device)
            if run:
                rates[i].append(n / (time.perf_counter() - start))
    return rates


def generation_throughput(model, tokenizer, prompt: str = "The Leaning Tower of Pisa is known for",
                          new_tokens: int = 32, repeats: int = 3) -> float:
    """Greedy tokens/s for exactly `new_tokens` new tokens, median of `repeats` runs."""
    return float(statistics.median(decode_rates([model], tokenizer, prompt, new_tokens, repeats)[0]))


def model_stats(model, tokenizer=None, seq_len: int = 128, throughput: bool = True,
                new_tokens: int = 32, repeats: int = 3) -> dict:
    """Parameters, MACs/token, weight memory, forward peak memory and tokens/s for one model."""
    from .stats import count_params, macs_per_token, weight_bytes

    stats = dict(count_params(model))
    stats["macs_per_token"] = macs_per_token(model, seq_len)
    stats["weight_mib"] = weight_bytes(model) / 2**20
    stats["forward_peak_mib"] = peak_forward_bytes(model, seq_len) / 2**20
    if throughput and tokenizer is not None:
        stats["tokens_per_s"] = generation_throughput(model, tokenizer, new_tokens=new_tokens,
                                                      repeats=repeats)
    return stats
