"""Group importance: the paper's criteria on each member slice, then an aggregation over members.

For a member slice W (one weight read along one dimension for one group), each criterion is a
small registered class in `criteria.py` that names what it needs (weights, the gradient
g = dL/dW of the calibration loss, the float32 Fisher diagonal F = mean_n (dL_n/dW)^2 from
per-sample gradients whatever the model dtype, activations) and gives its per-member formula
(Eq. numbers of arXiv 2305.11627): random, l1, l2, taylor-vector (Eq. 3-4), taylor-vector-rows
(the official "vectorize"), taylor-element1 / taylor-element2 (Eq. 5; `taylor-mix` is an alias),
taylor-second, fluctuation (FLAP). This module runs the passes they need.

Aggregations over the members of a group (Eq. 6), in execution order (q, k, v, o / gate, up,
down): sum, mean, max, prod, first, last (the paper's "last-only": o_proj / down_proj). "first"
is the first member in execution order (q_proj / gate_proj; the official code's root is k_proj).
"prod" is returned as the log of the product, sum log(score) (float64, each member score floored
at the smallest float32): a product of tens or hundreds of member scores leaves float32's range,
the log keeps the same ranking.

Memory: statistics are reduced to per-group vectors inside post-accumulate-grad hooks, and each
gradient is dropped once used; only the scored weights require grad. taylor-element2 needs the
float32 Fisher diagonal of every scored weight until the gradient pass reads it: in low-memory
mode the scored weights are taken in chunks of whole layers (top first, so the backward of a chunk
stops at its lowest layer) whose Fisher buffers fit ACCUMULATOR_SHARE of the model's weight bytes,
each chunk with its own per-sample and gradient passes (more compute, bounded memory); fast mode
takes them all at once.
"""

from __future__ import annotations

from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Callable

import numpy as np
import pandas as pd
import torch
from torch.utils.checkpoint import checkpoint

from .arch import arch_of
from .criteria import REGISTRY, Criterion, InputCriterion, criterion as registered
from .options import option
from .groups import Family, Member, families as all_families, group_param_counts
from .models import decoder_body, head_logits, layers_of

CRITERIA = tuple(REGISTRY)            # pruner/criteria.py: one registered class per criterion
ALIASES = {"taylor-mix": "taylor-element2"}   # LLM-Pruner's name for the paper's element-wise second order
CALIBRATION_FREE = tuple(name for name, c in REGISTRY.items() if c.calibration_free)
AGGREGATIONS = ("sum", "mean", "max", "prod", "first", "last")
GRADIENT_CRITERIA = tuple(name for name, c in REGISTRY.items() if c.needs & {"gradient", "fisher"})
COLUMNS = ["layer", "kind", "group", "score", "n_params", "criterion", "aggregation"]
# tokens per vocabulary-projection chunk in scoring's loss, in either mode: the full (tokens x vocab)
# float32 logits (805 MB for 32 x 128 tokens of the default model) cost more in memory traffic than
# the chunks' recomputed projection (the default model's Score pass 20-23 s instead of 25-31 s,
# 23 s instead of 48 s in a fresh process; the same scores bit for bit: README, benchmarks)
LOSS_CHUNK = 64
ACCUMULATOR_SHARE = 0.25   # low-memory mode: float32 Fisher buffers held at once / the model's weight bytes
# Fisher buffers held until a gradient pass reads them (taylor-second adds per sample instead)
FISHER_CRITERIA = tuple(name for name, c in REGISTRY.items() if {"fisher", "gradient"} <= c.needs)
FP16_LOSS_SCALE = 1024.0   # float16 models: loss x this before backward, gradients / this in float32


@dataclass
class ScoreConfig:
    criterion: str = option("taylor-element1", "importance of each member slice (pruner/criteria.py)",
                            choices=CRITERIA + tuple(ALIASES))
    aggregation: str = option("sum", "group importance from its members': first = q/k/v, gate/up; "
                              "last = o_proj, down_proj (the paper's last-only)", choices=AGGREGATIONS)
    kinds: tuple[str, ...] = ("attn", "mlp")
    seed: int = 0
    batch_size: int | None = None   # samples per forward; None = all at once (LLM-Pruner)
    low_memory: bool | None = None  # recompute layers, Fisher buffers in chunks; None = auto

    def __post_init__(self):
        self.criterion = canonical(self.criterion)

    def validate(self) -> None:
        if self.criterion not in CRITERIA:
            raise ValueError(f"unknown criterion {self.criterion!r}; use one of {CRITERIA}")
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"unknown aggregation {self.aggregation!r}; use one of {AGGREGATIONS}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")


def canonical(criterion: str) -> str:
    """The criterion's own name (aliases such as taylor-mix resolved)."""
    return ALIASES.get(criterion, criterion)


def criterion_of(name: str) -> Criterion:
    """The registered criterion (pruner/criteria.py) of `name` or its alias."""
    return registered(canonical(name))


# ----------------------------------------------------------------------------- reductions

def reduce_to_groups(elementwise: torch.Tensor, member: Member, n_groups: int) -> torch.Tensor:
    """Sum an elementwise statistic over each group's slice -> (n_groups,) float32."""
    per_position = elementwise if elementwise.dim() == 1 else elementwise.sum(dim=1 - member.dim)
    owner = member.owner.to(per_position.device)
    valid = owner >= 0
    out = torch.zeros(n_groups, dtype=torch.float32, device=per_position.device)
    return out.index_add_(0, owner[valid], per_position[valid].float())


def aggregate(member_scores: torch.Tensor, how: str) -> torch.Tensor:
    """(n_members, n_groups) in execution order -> (n_groups,)."""
    if how == "sum":
        return member_scores.sum(0)
    if how == "mean":
        return member_scores.mean(0)
    if how == "max":
        return member_scores.max(0).values
    if how == "prod":   # log of the product: float32 products of many members under/overflow
        tiny = torch.finfo(torch.float32).tiny
        return member_scores.double().clamp_min(tiny).log().sum(0)
    if how == "first":
        return member_scores[0]
    if how == "last":
        return member_scores[-1]
    raise ValueError(f"unknown aggregation {how!r}; use one of {AGGREGATIONS}")


# ----------------------------------------------------------------------------- backward passes

def _members_by_param(fams: list[Family]) -> dict[str, list[tuple[int, int, Member]]]:
    by_param = defaultdict(list)
    for f, fam in enumerate(fams):
        for m, member in enumerate(fam.members):
            by_param[member.param].append((f, m, member))
    return by_param


def _ce_sum(head: Callable[[torch.Tensor], torch.Tensor], hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    logits = head(hidden)                                                   # (n, V)
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    return torch.nn.functional.cross_entropy(logits, labels, reduction="sum")


def causal_lm_loss(model, input_ids: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
    """Mean next-token NLL over all positions, in at least float32.

    With `chunk`, the vocabulary projection runs `chunk` tokens at a time under activation
    checkpointing, so full (tokens x vocab) logits never sit in memory for the backward pass.
    """
    if chunk is None:
        logits = model(input_ids=input_ids, use_cache=False).logits[:, :-1]   # (B, L-1, V)
        return _ce_sum(torch.nn.Identity(), logits.flatten(0, 1), input_ids[:, 1:].flatten()) \
            / logits.shape[0] / logits.shape[1]
    hidden = decoder_body(model)(input_ids=input_ids, use_cache=False).last_hidden_state[:, :-1]
    hidden, labels = hidden.flatten(0, 1), input_ids[:, 1:].flatten()       # (B*(L-1), H), (B*(L-1),)
    head = partial(head_logits, model)      # the projection with the family's scaling / soft-capping
    total = sum(checkpoint(_ce_sum, head, hidden[s: s + chunk], labels[s: s + chunk],
                           use_reentrant=False) for s in range(0, labels.numel(), chunk))
    return total / labels.numel()


@contextmanager
def layer_checkpointing(model, enabled: bool = True):
    """Recompute each decoder layer in the backward pass instead of storing its activations
    (torch.utils.checkpoint, non-reentrant), without switching the model to training mode."""
    layers = list(layers_of(model)) if enabled else []
    for layer in layers:
        def forward(*args, _original=layer.forward, **kwargs):
            return checkpoint(_original, *args, use_reentrant=False, **kwargs)
        layer.forward = forward
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward


class PassCounter:
    """Progress of scoring's forward+backward passes for a callback(fraction, phase): each pass
    counts 1, advanced within a pass by the share of scored weights whose gradient has arrived."""

    def __init__(self, total_passes: int, progress: Callable[[float, str], None] | None):
        self.total, self.progress, self.done, self.last = max(1, total_passes), progress, 0, -1.0
        self.phase = ""

    def within(self, share: float) -> None:
        fraction = min(1.0, (self.done + share) / self.total)
        if self.progress and (fraction - self.last >= 0.02 or share >= 1.0):
            self.last = fraction
            self.progress(fraction, f"{self.phase}: pass {min(self.done + 1, self.total)} of {self.total}")

    def finished_pass(self) -> None:
        self.within(1.0)
        self.done += 1


def _backward_passes(model, names: set[str], batches: list[torch.Tensor], weights: list[float],
                     on_grad: Callable[[str, torch.Tensor, torch.Tensor], None], accumulate: bool,
                     low_memory: bool = True, counter: PassCounter | None = None):
    """Run forward+backward on each batch; `on_grad(name, weight, grad)` sees each scored weight's
    gradient (after the last batch when `accumulate`, else after every batch) and the gradient is
    dropped right after. Only weights in `names` require grad during the passes. `counter` hears of
    every gradient and every finished pass."""
    params = dict(model.named_parameters())
    arrived = {"n": 0}
    saved = {id(p): p.requires_grad for p in model.parameters()}
    state = {"act": False}
    handles = []
    # float16 gradients of a small loss underflow: scale the loss up, the gradients back down in float32
    scale = FP16_LOSS_SCALE if any(params[n].dtype == torch.float16 for n in names) else 1.0

    def hook_for(name):
        def hook(p):
            arrived["n"] += 1
            if counter:
                counter.within(arrived["n"] / len(names))
            if state["act"]:
                grad = p.grad.detach()
                on_grad(name, p.detach(), grad if scale == 1.0 else grad.float() / scale)
                p.grad = None
        return hook

    try:
        for p in model.parameters():
            p.requires_grad_(False)
        for name in names:
            params[name].requires_grad_(True)
            params[name].grad = None
            handles.append(params[name].register_post_accumulate_grad_hook(hook_for(name)))
        with layer_checkpointing(model, low_memory):
            for i, (batch, weight) in enumerate(zip(batches, weights)):
                state["act"] = (not accumulate) or i == len(batches) - 1
                arrived["n"] = 0
                loss = causal_lm_loss(model, batch, LOSS_CHUNK) * weight
                (loss * scale).backward()
                if counter:
                    counter.finished_pass()
    finally:
        for h in handles:
            h.remove()
        for p in model.parameters():
            p.requires_grad_(saved[id(p)])
            p.grad = None


def _layer_of(name: str) -> int:
    """The decoder layer a parameter name belongs to (-1 for model-wide ones: embedding, head)."""
    parts = name.split(".")
    for before, index in zip(parts, parts[1:]):
        if before == "layers" and index.isdigit():
            return int(index)
    return -1


def accumulator_chunks(params: dict, names: set[str], budget_bytes: int | None) -> list[set[str]]:
    """Scored weights in chunks of whole layers, top layer first, each chunk's float32 buffers at
    most `budget_bytes` (a layer larger than that is a chunk of its own); one chunk when None."""
    if budget_bytes is None:
        return [set(names)]
    by_layer: dict[int, list[str]] = defaultdict(list)
    for name in names:
        by_layer[_layer_of(name)].append(name)
    chunks, current, used = [], set(), 0
    for layer in sorted(by_layer, reverse=True):        # -1 (model-wide) last
        size = sum(params[n].numel() * 4 for n in by_layer[layer])
        if current and used + size > budget_bytes:
            chunks.append(current)
            current, used = set(), 0
        current |= set(by_layer[layer])
        used += size
    if current:
        chunks.append(current)
    return chunks


def _split(input_ids: torch.Tensor, batch_size: int | None) -> tuple[list, list]:
    n = input_ids.shape[0]
    size = n if batch_size is None else min(batch_size, n)
    batches = list(torch.split(input_ids, size))
    return batches, [b.shape[0] / n for b in batches]


def logit_chunk_bytes(model) -> int:
    """One chunk of scoring's loss in its backward: LOSS_CHUNK tokens' float32 logits recomputed,
    their log-softmax, the two gradients and a spare (5 copies)."""
    return 5 * LOSS_CHUNK * model.config.vocab_size * 4


def loss_input_bytes(model, n_tokens: int) -> int:
    """What the chunked loss reads: the body's final hidden states over `n_tokens`, their
    flattened copy and its gradient (float32 at most)."""
    return 3 * n_tokens * model.model.embed_tokens.weight.shape[1] * 4


def layer_activation_bytes(model, n_tokens: int) -> int:
    """A conservative estimate of what the decoder layers keep for backward over `n_tokens`."""
    hidden = model.model.embed_tokens.weight.shape[1]
    inter = max(arch_of(model).mlp_width(layer) for layer in layers_of(model))
    elem = next(model.parameters()).element_size()
    return int(n_tokens * len(layers_of(model)) * (14 * hidden + 5 * inter) * elem)


def activation_bytes(model, n_tokens: int) -> int:
    """A conservative estimate of the activations one forward+backward over `n_tokens` keeps:
    every layer's, the loss's input, and one chunk of its logits (scoring never holds them all)."""
    return layer_activation_bytes(model, n_tokens) + loss_input_bytes(model, n_tokens) + logit_chunk_bytes(model)


def available_bytes(device: torch.device) -> int:
    """Memory scoring may use: 80% of free CUDA memory; on the CPU half of what this process can
    still take (the container's cgroup limit, $PRUNING_STUDIO_MEMORY_GB and MemAvailable)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(0.8 * free)
    if device.type == "cpu":
        from .resources import free_bytes

        return free_bytes() // 2
    return 0


def resolve_low_memory(model, input_ids: torch.Tensor, batch_size: int | None,
                       setting: bool | None, criterion: str = "") -> bool:
    """An explicit setting wins; auto turns the low-memory mode on only when the activations of
    the largest pass (and, for taylor-element2, the float32 Fisher buffers of every scored weight)
    would not fit comfortably: it costs an extra forward pass per layer chunk."""
    if setting is not None:
        return bool(setting)
    rows = input_ids.shape[0] if batch_size is None else min(batch_size, input_ids.shape[0])
    device = next(model.parameters()).device
    need = activation_bytes(model, rows * input_ids.shape[1])
    if criterion in FISHER_CRITERIA:
        need += 4 * sum(p.numel() for layer in layers_of(model) for p in layer.parameters())
    return need > available_bytes(device)


def member_statistics(model, input_ids: torch.Tensor, criterion: str, fams: list[Family],
                      seed: int = 0, batch_size: int | None = None,
                      low_memory: bool | None = None,
                      progress: Callable[[float, str], None] | None = None) -> list[torch.Tensor]:
    """Per family a (n_members, n_groups) float32 tensor of member-slice scores.

    input_ids: (n_samples, seq_len) calibration tokens on the model's device.
    progress: optional callable(fraction, phase) through the forward+backward passes.
    """
    crit = criterion_of(criterion)
    params = dict(model.named_parameters())
    device = next(model.parameters()).device
    stats = [torch.zeros(len(f.members), f.n_groups, device=device) for f in fams]
    if "seed" in crit.needs:
        gen = torch.Generator().manual_seed(seed)
        for f, fam in enumerate(fams):
            stats[f][:] = torch.rand(fam.n_groups, generator=gen).to(device)
        return stats
    by_param = _members_by_param(fams)

    def add(name: str, elementwise, into: list[torch.Tensor]):
        """elementwise: a tensor, or a callable(member) -> per-position or elementwise tensor."""
        for f, m, member in by_param[name]:
            values = elementwise(member) if callable(elementwise) else elementwise
            into[f][m] += reduce_to_groups(values, member, fams[f].n_groups)

    if "activations" in crit.needs:
        return crit.finish(_input_criterion(model, input_ids, fams, stats, params, crit))
    if "hidden states" in crit.needs:
        return _block_influence(model, input_ids, fams, stats)

    if crit.needs == {"weights"}:
        with torch.no_grad():
            for name in by_param:
                add(name, crit.element(params[name].detach().float()), stats)
        return crit.finish(stats)

    if input_ids is None or input_ids.numel() == 0:
        raise ValueError(f"{crit.name} needs calibration samples (input_ids)")
    input_ids = input_ids.to(device)
    low_memory = resolve_low_memory(model, input_ids, batch_size, low_memory, crit.name)
    names = set(by_param)
    budget = None
    if low_memory and crit.name in FISHER_CRITERIA:
        budget = int(ACCUMULATOR_SHARE * sum(p.numel() * p.element_size() for p in params.values()))
    was_training = model.training
    model.eval()
    last_accumulator_peak["bytes"] = 0
    chunks = accumulator_chunks(params, names, budget)
    per_chunk = (input_ids.shape[0] if "fisher" in crit.needs else 0) + \
        (len(_split(input_ids, batch_size)[0]) if "gradient" in crit.needs else 0)
    counter = PassCounter(len(chunks) * per_chunk, progress)
    try:
        for chunk in chunks:
            _gradient_statistics(model, input_ids, crit, chunk, add, stats, batch_size, low_memory, counter)
    finally:
        model.train(was_training)
    return crit.finish(stats)


# the largest set of float32 Fisher buffers held at once by the last scoring (bytes): tests read it
last_accumulator_peak = {"bytes": 0}


def _gradient_statistics(model, input_ids, crit, names, add, stats, batch_size, low_memory,
                         counter: PassCounter | None = None) -> None:
    """The passes `crit` needs over the weights `names` (one accumulator chunk): per-sample
    gradients for the Fisher diagonal, then the accumulated gradient."""
    fisher: dict[str, torch.Tensor] = {}
    n = input_ids.shape[0]
    if "fisher" in crit.needs:
        fisher_only = "gradient" not in crit.needs        # taylor-second: added up per sample

        # per-sample gradients: F = mean_n g_n^2, accumulated in float32
        def on_sample_grad(name, w, g):
            g2 = g.float().square_() / n
            if fisher_only:
                add(name, crit.element(w.float(), fisher=g2), stats)
            elif name in fisher:
                fisher[name] += g2
            else:
                fisher[name] = g2
                held = sum(f.numel() * 4 for f in fisher.values())
                last_accumulator_peak["bytes"] = max(last_accumulator_peak["bytes"], held)
        samples = list(torch.split(input_ids, 1))
        if counter:
            counter.phase = "per-sample gradients for the Fisher diagonal"
        _backward_passes(model, names, samples, [1.0] * n, on_sample_grad, accumulate=False,
                         low_memory=low_memory, counter=counter)
        if fisher_only:
            return

    def on_grad(name, w, g):
        add(name, crit.element(w.float(), g.float(), fisher.pop(name, None)), stats)

    batches, weights = _split(input_ids, batch_size)
    if counter:
        counter.phase = "forward + backward on the calibration tokens"
    _backward_passes(model, names, batches, weights, on_grad, accumulate=True, low_memory=low_memory,
                     counter=counter)


def _zscore(values: torch.Tensor) -> torch.Tensor:
    """(n,) values standardized: (x - mean) / sample std (FLAP's standardization)."""
    return (values - values.mean()) / values.std().clamp_min(1e-30)


def _input_criterion(model, input_ids, fams, stats, params, crit):
    """Criteria read off o_proj / down_proj and the statistics of their inputs (fluctuation,
    wanda-sp, activation): `crit.column` per input channel, summed over each group's channels."""
    from .activations import input_statistics

    if input_ids is None or input_ids.numel() == 0:
        raise ValueError(f"{crit.name} needs calibration samples (input_ids)")
    hidden = [f for f, fam in enumerate(fams) if fam.kind == "hidden"]
    if hidden and not crit.scores_hidden:
        raise ValueError(f"{crit.name} scores attention and MLP groups, not hidden channels")
    if hidden:
        from .activations import reader_statistics

        reads = reader_statistics(model, input_ids)
        per_channel = crit.hidden([(e.var + e.mean.square()).float() for e in reads.values()])   # (hidden,)
        for f in hidden:
            stats[f][-1] = per_channel.to(stats[f].device)
            stats[f][0] = _zscore(per_channel.double()).to(stats[f].device)
    blocks = [f for f, fam in enumerate(fams) if fam.kind != "hidden"]
    inputs = input_statistics(model, input_ids) if blocks else {}
    for f in blocks:
        fam = fams[f]
        last = fam.members[-1]                     # o_proj / down_proj, read by input column
        entry = inputs[(fam.layer, fam.block)]
        weight = params[last.param].detach().float()
        per_column = crit.column(weight, entry.mean.float().to(weight.device),
                                 entry.var.float().to(weight.device))                   # (in,)
        stats[f][-1] = reduce_to_groups(per_column, last, fam.n_groups)
        # row 0: FLAP's standardized score, per channel over the layer, averaged per group
        z = _zscore(per_column.double() ** crit.z_power[fam.block])
        channels = reduce_to_groups(torch.ones_like(z), last, fam.n_groups).clamp_min(1)
        stats[f][0] = reduce_to_groups(z, last, fam.n_groups) / channels
    return stats


@torch.no_grad()
def block_influence(model, input_ids: torch.Tensor, batch_size: int = 8) -> list[float]:
    """ShortGPT's block influence of every decoder layer: 1 - mean over all calibration tokens of
    the cosine similarity between the layer's input and output hidden states."""
    layers = layers_of(model)
    sums = [0.0] * len(layers)
    count = [0]
    handles = []

    def hook_for(i):
        def hook(module, args, kwargs, output):
            h_in = args[0] if args else kwargs["hidden_states"]
            h_out = output[0] if isinstance(output, tuple) else output
            cos = torch.nn.functional.cosine_similarity(h_in.float(), h_out.float(), dim=-1)   # (b, t)
            sums[i] += float(cos.sum())
            if i == 0:
                count[0] += cos.numel()
        return hook

    for i, layer in enumerate(layers):
        handles.append(layer.register_forward_hook(hook_for(i), with_kwargs=True))
    try:
        device = next(model.parameters()).device
        for start in range(0, input_ids.shape[0], batch_size):
            decoder_body(model)(input_ids=input_ids[start: start + batch_size].to(device), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return [1.0 - total / max(1, count[0]) for total in sums]


def _block_influence(model, input_ids, fams, stats):
    """Each layer's block influence, spread evenly over its groups (their sum is the layer's)."""
    if input_ids is None or input_ids.numel() == 0:
        raise ValueError("block-influence needs calibration samples (input_ids)")
    influence = block_influence(model, input_ids)
    groups_in_layer = defaultdict(int)
    for fam in fams:
        groups_in_layer[fam.layer] += fam.n_groups
    for f, fam in enumerate(fams):
        if fam.kind == "hidden":
            raise ValueError("block-influence scores whole decoder layers, not hidden channels")
        stats[f][-1] = influence[fam.layer] / groups_in_layer[fam.layer]
    return stats


def scores_frame(model, fams: list[Family], stats: list[torch.Tensor], criterion: str,
                 aggregation: str) -> pd.DataFrame:
    """Aggregate member statistics into the tidy scores DataFrame (COLUMNS; criteria read off
    o_proj / down_proj inputs add "z", FLAP's standardized channel mean of each group)."""
    crit = criterion_of(criterion)
    with_z = isinstance(crit, InputCriterion)
    frames = []
    for fam, member_scores in zip(fams, stats):
        if crit.aggregates:
            group_scores = aggregate(member_scores, aggregation)
        else:           # one score per group: random fills every member row, the others the last
            group_scores = member_scores[-1]
        frame = pd.DataFrame({
            "layer": np.full(fam.n_groups, fam.layer, dtype=np.int64),
            "kind": fam.kind,
            "group": np.arange(fam.n_groups, dtype=np.int64),
            "score": group_scores.double().cpu().numpy(),
            "n_params": group_param_counts(model, fam).numpy().astype(np.int64),
        })
        if with_z:
            frame["z"] = member_scores[0].double().cpu().numpy()
        frames.append(frame)
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS[:5])
    df["criterion"] = criterion
    df["aggregation"] = aggregation
    return df[COLUMNS + (["z"] if with_z and "z" in df else [])]


def score(model, input_ids: torch.Tensor | None, config: ScoreConfig | None = None,
          progress: Callable[[float, str], None] | None = None, **overrides) -> pd.DataFrame:
    """Score every group of `config.kinds` in every layer -> DataFrame with COLUMNS.

    `layer` and `group` are 0-based ints (`layer` is -1 for model-wide hidden channels).
    """
    config = config or ScoreConfig(**overrides)
    config.validate()
    fams = all_families(model, config.kinds)
    stats = member_statistics(model, input_ids, config.criterion, fams, config.seed,
                              config.batch_size, config.low_memory, progress)
    return scores_frame(model, fams, stats, config.criterion, config.aggregation)


def score_many(model, input_ids, criteria: list[str], aggregations: list[str],
               kinds=("attn", "mlp"), seed: int = 0) -> pd.DataFrame:
    """Every criterion x aggregation in one long DataFrame; each criterion's passes run once."""
    fams = all_families(model, kinds)
    frames = []
    for name in map(canonical, criteria):
        stats = member_statistics(model, input_ids, name, fams, seed)
        for aggregation in aggregations:
            frames.append(scores_frame(model, fams, stats, name, aggregation))
    return pd.concat(frames, ignore_index=True)
