"""Plan which groups go, and apply the plan by physically slicing a deep copy of the model.

Data flow: scores (DataFrame from `importance.score`) -> `make_plan` -> `Plan` -> `apply_plan`.
`prune_model` runs the whole loop, with iterative re-scoring, on calibration token ids.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import nn

from .arch import arch_of, norm_eps
from .groups import Family, family, group_param_counts, hidden_family
from .models import attention_shape, layers_of
from .options import Range, check, option

STRATEGIES = ("block", "channel", "layer")
SCOPES = ("local", "global")
GRANULARITIES = ("kv-group", "query-heads")
ALLOCATIONS = ("uniform", "depth", "sensitivity", "standardized")
UNITS = ("parameters", "groups")


MAX_SHARE = 0.95      # the largest share of the parameters a target may ask for


@dataclass
class PruneConfig:
    """What to remove: `amount` in its `unit` (a share of all parameters, the group ratio solved
    for it; or LLM-Pruner's fraction of groups, per layer (local) or per kind across layers
    (global)). Each field's help, choices and bounds (pruner/options.py) are what the CLI, the page
    and the README show."""

    amount: float = option(
        0.2, "how much to remove: a share of all parameters or a fraction of groups, as unit says",
        bounds=Range(0.0, 1.0, hi_closed=False), label="amount")
    unit: str = option(
        "parameters", "what the amount counts: a share of all parameters (embeddings included; the group "
        f"ratio is solved for it, at most {MAX_SHARE:g}), or a fraction of groups in every layer (local) or per "
        "kind across layers (global), LLM-Pruner's ratio", choices=UNITS, label="amount is a share of")
    strategy: str = option(
        "block", "block: attention groups and MLP channels; channel: residual (hidden) channels; "
        "layer: whole decoder layers", choices=STRATEGIES)
    scope: str = option("local", "local: the ratio in every layer; global: one ranking across layers per kind",
                        choices=SCOPES)
    attn_layers: tuple[int, int] | None = option(
        None, "[start, end) layers whose attention is pruned (default: all but the first 3 and last 2)",
        type=tuple, label="attention layers")
    mlp_layers: tuple[int, int] | None = option(
        None, "[start, end) layers whose MLP is pruned (default: all but the first 3 and last 2)",
        type=tuple, label="MLP layers")
    prune_attn: bool = option(True, "prune attention (else leave it whole)", flag="--attn")
    prune_mlp: bool = option(True, "prune the MLPs (else leave them whole)", flag="--mlp")
    iterative_steps: int = option(
        1, "prune in this many equal steps, scoring the partly pruned model again before each",
        bounds=Range(1, None), label="iterative steps")
    attn_granularity: str = option(
        "kv-group", "attention groups: whole KV groups, or query heads (uniform per KV group)",
        choices=GRANULARITIES, flag="--granularity", label="attention groups")
    attn_share: float | None = option(
        None, "with a parameter target of the block strategy: attention's share of the removed "
        "parameters (0 = MLP only), as close as its group sizes allow; the MLPs remove the rest",
        bounds=Range(0.0, 1.0), type=float,
        label="attention's share of the removed parameters (0 = MLP only)")
    hidden_share: float = option(
        0.0, "with a parameter target of the block strategy: the hidden (embedding) channels' share of the "
        "removed parameters, removed first in one step and ranked by their activation whatever the criterion "
        "(Minitron's third width axis); attention and the MLPs, scored again on that model, remove the rest",
        bounds=Range(0.0, 1.0, hi_closed=False),
        label="hidden (embedding) channels' share of the removed parameters")
    compensate: bool = option(False, "fold removed channels' mean output into biases (FLAP)",
                              label="bias compensation (FLAP)")
    recompute_means: bool = option(
        False, "with compensation: re-measure the means layer by layer on the partly pruned model",
        label="re-measure the means layer by layer")
    refit: bool = option(
        False, "with compensation: refit each pruned down_proj / o_proj (kept columns and a bias) by damped least "
        "squares to the dense layer's output on the pruned model's own propagated calibration inputs",
        label="least-squares refit (down_proj / o_proj)")
    allocation: str = option(
        "uniform", "per-layer ratios (local scope): uniform; depth: falling linearly from ratio * (1 + "
        "layer_spread) at the first pruned layer to ratio * (1 - layer_spread) at the last (deeper layers keep "
        "more), each times its score_shape factor from the scores (nothing more measured); sensitivity: set "
        "by each layer's measured calibration-loss increase when pruned alone; standardized (FLAP): scores "
        "standardized per layer and kind, one ranking across layers and between attention and MLP", choices=ALLOCATIONS,
        label="per-layer ratios (local scope)")
    layer_spread: float = option(
        0.5, "with depth allocation: the first / last pruned layer's ratio is ratio * (1 +/- this); with "
        "sensitivity allocation: layer ratios stay within ratio * (1 -/+ this)",
        bounds=Range(0.0, 1.0))
    score_shape: float = option(
        1.0, "with depth allocation: each layer's ratio also scales by (the median score of its groups / the "
        "geometric mean of the layers' medians) ** -this, so a layer the criterion rates low loses more, at the "
        "same total; the Prune step's own scores, nothing more measured (0: the linear ramp alone)",
        bounds=Range(0.0, 4.0))
    probe_tokens: int = option(
        4096, "with sensitivity allocation: calibration tokens each layer's probe runs on (the first rows, "
        "up to this many; each probe is a partial forward over them)", bounds=Range(1, None))
    round_to: int = option(1, "kept MLP channels per layer: a multiple of this (see bench/decode_speed.py)",
                           bounds=Range(1, None))

    def validate(self, n_layers: int) -> None:
        check(self)                                    # choices and bounds of every field
        if self.by_params and not 0.0 < self.amount < MAX_SHARE:
            raise ValueError(f"amount must be in (0, {MAX_SHARE:g}) for a share of parameters, got {self.amount}")
        for name in ("attn_layers", "mlp_layers"):
            rng = getattr(self, name)
            if rng is not None:
                start, end = rng
                if not 0 <= start <= end <= n_layers:
                    raise ValueError(f"{name}={rng} is outside the model's 0..{n_layers} layers")
        if self.attn_share is not None:
            if not self.by_params or self.strategy != "block":
                raise ValueError("attn_share splits a share-of-parameters amount of the block strategy")
        if self.allocation != "uniform" and (self.strategy != "block" or self.scope != "local"):
            raise ValueError(f"{self.allocation} allocation sets per-layer ratios of the block strategy, "
                             "local scope")
        if self.hidden_share and (not self.by_params or self.strategy != "block"):
            raise ValueError("hidden_share splits a share-of-parameters amount of the block strategy")
        if self.allocation == "standardized" and self.attn_share is not None:
            raise ValueError("standardized allocation ranks attention and MLP together: attn_share must be None")
        if self.recompute_means and not self.compensate:
            raise ValueError("recompute_means refines bias compensation: set compensate=True too")
        if self.refit and not self.compensate:
            raise ValueError("refit replaces bias compensation's bias by a fitted one: set compensate=True too")
        if self.compensate and self.strategy != "block":
            raise ValueError("bias compensation applies to the block strategy")
        if self.strategy == "block" and not (self.prune_attn or self.prune_mlp):
            raise ValueError("block strategy with neither attention nor MLP pruning removes nothing")

    @property
    def uses_means(self) -> bool:
        """Whether pruning (and its sensitivity probes) needs the calibration means of the removed
        inputs: mean compensation does; the refit fits every bias itself."""
        return self.compensate and not self.refit

    @property
    def by_params(self) -> bool:
        """Whether the amount is a share of parameters (else a fraction of groups)."""
        return self.unit == "parameters"

    @classmethod
    def from_record(cls, record: dict) -> "PruneConfig":
        """A config from its saved dict (`dataclasses.asdict`, JSON lists as tuples); records written
        before the amount had a unit (`ratio` / `target_params`) read the same."""
        record = {k: tuple(v) if isinstance(v, list) else v for k, v in record.items()}
        target, ratio = record.pop("target_params", None), record.pop("ratio", None)
        if target is not None:
            record.update(amount=target, unit="parameters")
        elif ratio is not None:
            record.update(amount=ratio, unit="groups")
        return cls(**record)

    def compensated_blocks(self) -> set[str]:
        """The blocks whose removed groups bias compensation folds into a bias."""
        if self.strategy != "block" or not self.compensate:
            return set()
        blocks = set()
        if self.prune_attn and self.attn_share != 0.0:
            blocks.add("attn")
        if self.prune_mlp and self.attn_share != 1.0:
            blocks.add("mlp")
        return blocks

    def normalized(self, model=None) -> tuple["PruneConfig", list[str]]:
        """A copy with the settings that cannot apply turned off, and one note per change.

        The one place both fronts (CLI, dashboard) make these decisions: attention's share needs
        a parameter target of the block strategy with both kinds pruned; compensation needs the
        block strategy and a family whose config can hold the biases (`model` given); re-measured
        means need compensation; sensitivity allocation needs the block strategy, local scope.
        """
        new, notes = copy.copy(self), []
        if new.attn_share is not None and (new.strategy != "block" or not new.by_params
                                           or not (new.prune_attn and new.prune_mlp)):
            new.attn_share = None
            notes.append("attention's share applies to a parameter target of the block strategy with "
                         "attention and MLP both pruned: ignored")
        if new.hidden_share and (new.strategy != "block" or not new.by_params):
            new.hidden_share = 0.0
            notes.append("the hidden channels' share applies to a parameter target of the block strategy: ignored")
        if new.compensate and new.strategy != "block":
            new.compensate = False
            notes.append(f"bias compensation applies to the block strategy, not {new.strategy!r}: off")
        if new.compensate and model is not None:
            arch = arch_of(model)
            missing = sorted(b for b in new.compensated_blocks() if not arch.can_compensate(b))
            if missing:
                new.compensate = False
                notes.append(f"bias compensation is not available for {arch.name} (its config has no "
                             f"{' / '.join({'attn': 'o_proj', 'mlp': 'down_proj'}[b] for b in missing)} "
                             "bias switch, so the export would not load in plain transformers): off")
        if new.recompute_means and not new.compensate:
            new.recompute_means = False
            notes.append("re-measured compensation means need compensation: off")
        if new.refit and not new.compensate:
            new.refit = False
            notes.append("the least-squares refit needs compensation (its bias): off")
        if new.allocation != "uniform" and (new.strategy != "block" or new.scope != "local"):
            notes.append(f"{new.allocation} allocation sets per-layer ratios of the block strategy, local "
                         "scope: uniform")
            new.allocation = "uniform"
        if new.allocation == "standardized" and new.attn_share is not None:
            new.attn_share = None
            notes.append("standardized allocation ranks attention and MLP together, so it sets attention's "
                         "share itself: the share setting is ignored")
        return new, notes


def needs_calibration(score_config, prune_config: "PruneConfig") -> bool:
    """Whether scoring or pruning reads calibration tokens (gradients, activations, probes)."""
    from .importance import CALIBRATION_FREE

    return (score_config.criterion not in CALIBRATION_FREE or prune_config.compensate or prune_config.refit
            or prune_config.allocation == "sensitivity" or bool(prune_config.hidden_share))


def default_layer_range(n_layers: int) -> tuple[int, int]:
    """Skip the first 3 and last 2 layers, like the official LLM-Pruner scripts (all, if < 8)."""
    return (3, n_layers - 2) if n_layers >= 8 else (0, n_layers)


def prunable_share(model, attn_share: float | None, attn_layers: tuple[int, int],
                   mlp_layers: tuple[int, int], hidden_share: float = 0.0) -> float:
    """The largest share of *all* parameters (embeddings included) that attention and MLP groups
    in these layer ranges can give, split as `attn_share` asks (None: one ratio for both, 0: MLP
    only, 1: attention only). Removing every group of a kind is the ceiling, never reachable.
    With `hidden_share` h of an amount A from hidden channels first, the groups give the rest,
    A (1 - h), from a model whose every group is narrower by about the share A h of hidden
    channels gone: A (1 - h) <= room (1 - A h), so A <= room / (1 - h + room h)."""
    from .groups import describe_groups
    from .models import unique_parameters

    groups = describe_groups(model)
    total = sum(p.numel() for p in unique_parameters(model))

    def in_range(kind, lo, hi):
        rows = groups[(groups.kind == kind) & (groups.layer >= int(lo)) & (groups.layer < int(hi))]
        return float(rows.params.sum()) / total

    attn, mlp = in_range("attn", *attn_layers), in_range("mlp", *mlp_layers)
    if attn_share is None:
        room = attn + mlp
    elif attn_share <= 0:
        room = mlp
    elif attn_share >= 1:
        room = attn
    else:
        room = min(mlp / (1 - attn_share), attn / attn_share)
    h = float(hidden_share or 0.0)
    return room / (1 - h + room * h) if h > 0 else room


def unreachable(model, config: PruneConfig) -> str | None:
    """Why a share-of-parameters amount of the block strategy cannot be reached with this model
    and these layer ranges, or None: checked before any calibration or scoring is paid for. Exact
    only without a hidden channels' share (whose ceiling `prunable_share` estimates), so only then;
    the planner's own check stands behind it. A config invalid for this model (layer ranges outside
    it) raises its own ValueError first."""
    config.validate(len(layers_of(model)))
    if not config.by_params or config.strategy != "block" or config.hidden_share:
        return None
    share = 0.0 if not config.prune_attn else 1.0 if not config.prune_mlp else config.attn_share
    ranges = layer_ranges(config, len(layers_of(model)))
    room = prunable_share(model, share, (ranges["attn"].start, ranges["attn"].stop),
                          (ranges["mlp"].start, ranges["mlp"].stop))
    if config.amount < room:
        return None
    named = {None: "the attention and MLP groups this recipe prunes", 0.0: "the MLP channels this recipe prunes",
             1.0: "the attention groups this recipe prunes"}
    what = named.get(share) or f"the attention and MLP groups this recipe prunes, attention giving {share:.0%},"
    return (f"{config.amount:.0%} of all parameters cannot be removed: with this model and these layer "
            f"ranges {what} can give at most {room:.1%} of them, and every layer keeps "
            "at least one group. Take part of the amount from the hidden channels (--hidden-share 0.5, Minitron's "
            "widths), give attention a share (--attn-share), widen the layer ranges (--layers), lower the "
            "amount, or count it in groups (--unit groups).")


def layer_ranges(config: PruneConfig, n_layers: int) -> dict[str, range]:
    default = default_layer_range(n_layers)
    return {"attn": range(*(config.attn_layers or default)),
            "mlp": range(*(config.mlp_layers or default))}


@dataclass
class Plan:
    """Kept indices per changed structure; anything not named stays whole."""

    attn_keep: dict[int, list[int]] = field(default_factory=dict)   # layer -> kept KV groups
    qhead_keep: dict[int, list[int]] = field(default_factory=dict)  # layer -> kept query heads
    mlp_keep: dict[int, list[int]] = field(default_factory=dict)    # layer -> kept MLP channels
    hidden_keep: list[int] | None = None                            # kept residual channels
    drop_layers: list[int] = field(default_factory=list)            # removed decoder layers

    def removed_groups(self, scores: pd.DataFrame) -> pd.DataFrame:
        """Rows of `scores` that this plan removes (for marking heatmaps before pruning)."""
        gone = pd.Series(False, index=scores.index)
        pairs = None                  # (layer, group) of every row, built once: one test per kind
        for kind, keep in (("attn", self.attn_keep), ("qhead", self.qhead_keep), ("mlp", self.mlp_keep)):
            if not keep:
                continue
            if pairs is None:
                pairs = pd.MultiIndex.from_arrays([scores.layer.to_numpy(), scores.group.to_numpy()])
            kept = pd.MultiIndex.from_arrays([[layer for layer, groups in keep.items() for _ in groups],
                                              [g for groups in keep.values() for g in groups]])
            rows = (scores.kind == kind) & scores.layer.isin(list(keep))
            gone |= rows & ~pairs.isin(kept)
        if self.hidden_keep is not None:
            gone |= (scores.kind == "hidden") & ~scores.group.isin(self.hidden_keep)
        if self.drop_layers:
            gone |= scores.kind.isin(["attn", "qhead", "mlp"]) & scores.layer.isin(self.drop_layers)
        return scores[gone]

    def params_removed(self, model, scores: pd.DataFrame) -> int:
        """Parameters this plan removes from `model` (counted, no model built)."""
        return params_removed(model, scores, self)

    def apply(self, model, input_stats: dict | None = None, recompute_ids: torch.Tensor | None = None,
              in_place: bool = False):
        """The model with this plan's groups cut out (a copy unless `in_place`; see apply_plan)."""
        return apply_plan(model, self, input_stats, recompute_ids, in_place)

    def summary(self, model=None) -> str:
        """One line per changed layer: what it keeps (of what `model`, the model before the cut,
        had, when given), then the residual channels and the dropped layers."""
        had = {}
        if model is not None:
            had = {"qhead": lambda i: attention_shape(model, i)[0],
                   "attn": lambda i: attention_shape(model, i)[1],
                   "mlp": lambda i: arch_of(model).mlp_width(layers_of(model)[i]),
                   "hidden": lambda _: model.config.hidden_size}

        def kept(kind, n, layer=None):
            return f"{n}/{had[kind](layer)}" if had else f"{n}"

        lines = []
        for layer in sorted({*self.attn_keep, *self.qhead_keep, *self.mlp_keep}):
            parts = [f"{kept(kind, len(keep[layer]), layer)} {what}"
                     for kind, what, keep in (("qhead", "query heads", self.qhead_keep),
                                              ("attn", "KV groups", self.attn_keep),
                                              ("mlp", "MLP channels", self.mlp_keep)) if layer in keep]
            lines.append(f"layer {layer}: keeps " + ", ".join(parts))
        if self.hidden_keep is not None:
            lines.append(f"hidden: keeps {kept('hidden', len(self.hidden_keep))} residual channels")
        if self.drop_layers:
            lines.append("drops decoder layers " + ", ".join(map(str, self.drop_layers)))
        return "\n".join(lines) or "removes nothing"

    def __str__(self) -> str:
        return self.summary()


# ----------------------------------------------------------------------------- planning

def _keep_count(n_original: int, ratio: float) -> int:
    """LLM-Pruner/Torch-Pruning rounding: keep floor(n * (1 - ratio)), at least 1."""
    return max(1, int(math.floor(n_original * (1.0 - ratio) + 1e-9)))


def _round_keep(keep: int, n_original: int, multiple: int) -> int:
    """`keep` rounded down to a multiple of `multiple` (at least one multiple, at most n)."""
    if multiple <= 1:
        return keep
    return min(n_original, max(multiple, keep // multiple * multiple))


def _top(sub: pd.DataFrame, k: int) -> list[int]:
    """Group ids of the k highest scores (ties: lower group id first), sorted."""
    groups = sub.group.to_numpy()
    order = np.lexsort((groups, -sub.score.to_numpy(dtype=float)))   # score down, then group up; NaN last
    return sorted(groups[order[:k]].tolist())


def attention_kind(config: PruneConfig) -> str:
    return "qhead" if config.attn_granularity == "query-heads" else "attn"


def _rows_by_layer(scores: pd.DataFrame) -> dict[int, pd.DataFrame]:
    """layer -> its rows of `scores`, in their order (one pass, not one filter per layer)."""
    return dict(tuple(scores.groupby("layer", sort=False)))


def _plan_query_heads(scores, ratios, original_counts, kv_heads) -> dict[int, list[int]]:
    """Per layer, the same number of best query heads in every KV group (uniform GQA).

    ratios: layer -> fraction of the layer's query heads to remove."""
    keep = {}
    by_layer = _rows_by_layer(scores[scores.kind == "qhead"])
    for layer, ratio in ratios.items():
        sub = by_layer.get(layer)
        if sub is None:
            continue
        n_kv = kv_heads[layer]
        n_rep_now = len(sub) // n_kv
        n_rep0 = original_counts.get(("qhead", layer), len(sub)) // n_kv
        per_group = min(n_rep_now, _keep_count(n_rep0, ratio))
        heads = []
        for g in range(n_kv):
            in_group = sub[(sub.group >= g * n_rep_now) & (sub.group < (g + 1) * n_rep_now)]
            heads += _top(in_group, per_group)
        keep[layer] = sorted(heads)
    return keep


def standardized(scores: pd.DataFrame) -> pd.Series:
    """FLAP's standardization: the scores' own "z" where the criterion gives it (each channel
    standardized over its layer, averaged per group, as FLAP does), else each group score minus its
    (layer, kind)'s mean, over their standard deviation (0 where a layer's kind has one group or
    equal scores)."""
    if "z" in scores and scores.z.notna().all():
        return scores.z
    by = scores.groupby(["layer", "kind"]).score
    std = by.transform("std").fillna(0.0)
    z = (scores.score - by.transform("mean")) / std.where(std > 0, 1.0)
    return z.where(std > 0, 0.0)


def standardized_removals(pool: pd.DataFrame, ratio: float) -> dict[tuple[str, int], int]:
    """(kind, layer) -> groups removed when the `ratio` lowest of `pool` (the candidate groups of
    every pruned kind and layer) go by one ranking of standardized scores; each keeps one."""
    order = pool.assign(z=standardized(pool)).sort_values(["z", "layer", "kind", "group"], kind="stable")
    budget = int(math.floor(ratio * len(order) + 1e-9))
    # each (kind, layer)'s best group is never removed: drop it, then cut from the bottom up
    best = order.groupby(["kind", "layer"]).cumcount(ascending=False) == 0
    counts = order[~best].iloc[:budget].groupby(["kind", "layer"]).size()
    return {key: int(counts.get(key, 0)) for key in order.groupby(["kind", "layer"]).size().index}


def depth_ratios(sizes: dict[int, int], ratio: float, spread: float,
                 shape: dict[int, float] | None = None) -> dict[int, float]:
    """layer -> ratio falling linearly with depth over the layers of `sizes` (layer -> group count):
    ratio * (1 + spread) at the first, ratio * (1 - spread) at the last, each layer's weight times
    its `shape` (score_shape's, if given), scaled so that the same groups go in all
    (sum n_l r_l = ratio sum n_l), each at most MAX_LAYER_RATIO.

    SlimGPT (Ling et al. 2024, arXiv 2412.18110) argues the other way (deeper layers pruned more,
    since a layer's error passes through the layers after it); on the default model, with the
    refit, the early layers measured the ones to cut deeper (README, *Pruning quality*)."""
    from .sensitivity import MAX_LAYER_RATIO

    if not sizes:
        return {}
    first, last = min(sizes), max(sizes)
    weights = {layer: 1.0 - spread * (2.0 * (layer - first) / (last - first) - 1.0) if last > first else 1.0
               for layer in sizes}                                                # 1 + spread ... 1 - spread
    if shape:
        weights = {layer: w * shape.get(layer, 1.0) for layer, w in weights.items()}
    scale = ratio * sum(sizes.values()) / sum(sizes[layer] * w for layer, w in weights.items())
    return {layer: min(MAX_LAYER_RATIO, scale * w) for layer, w in weights.items()}


def score_shape(scores, kind: str, layers, power: float, quantile: float | None = None) -> dict[int, float]:
    """layer -> (median score of its `kind` groups / the geometric mean of those medians) ** -power:
    above 1 where the criterion rates a layer's groups low. {} (no shape) for power 0, fewer than
    two layers, or a median that is not a positive finite number (a criterion without a scale).
    `quantile` takes each layer's score at that quantile instead of its median (measured, not used:
    bench/default_lever.py --shape-quantile)."""
    by_layer = scores[(scores.kind == kind) & scores.layer.isin(list(layers))].groupby("layer").score
    medians = by_layer.median() if quantile is None else by_layer.quantile(quantile)
    if not power or len(medians) < 2 or not (np.isfinite(medians.values).all() and (medians.values > 0).all()):
        return {}
    logs = np.log(medians.values.astype(np.float64))
    return {int(layer): float(np.exp(-power * (log - logs.mean()))) for layer, log in zip(medians.index, logs)}


def layer_sizes(scores, kind: str, layers, original_counts: dict[tuple[str, int], int]) -> dict[int, int]:
    """layer -> its original count of `kind` groups (the scored count where none was recorded),
    over `layers`, leaving out layers without any: what every allocation splits its total over."""
    present = scores[scores.kind == kind].groupby("layer").size()
    sizes = {layer: original_counts.get((kind, layer), int(present.get(layer, 0))) for layer in layers}
    return {layer: n for layer, n in sizes.items() if n}


def layer_ratios(scores, config, ratio, layers, kind, original_counts, sensitivity=None,
                 removals: dict[tuple[str, int], int] | None = None) -> dict[int, float]:
    """layer -> fraction of its (original) `kind` groups to remove: `ratio` everywhere, with
    `config.allocation == "depth"` falling linearly with depth, shaped by the layers' median scores
    (depth_ratios, score_shape), with "sensitivity"
    the measured-sensitivity split of the same total, with "standardized" the `removals` of one
    ranking of standardized scores (standardized_removals)."""
    sizes = layer_sizes(scores, kind, layers, original_counts)
    if config.allocation == "standardized" and removals is not None:
        # of the original count: groups already gone (earlier iterative steps) plus those removed now
        present = scores[scores.kind == kind].groupby("layer").size()
        return {layer: (n - int(present.get(layer, 0)) + removals.get((kind, layer), 0)) / n
                for layer, n in sizes.items()}
    if config.allocation == "depth":
        return depth_ratios(sizes, ratio, config.layer_spread, score_shape(scores, kind, sizes, config.score_shape))
    if config.allocation != "sensitivity" or sensitivity is None:
        return {layer: ratio for layer in sizes}
    from .sensitivity import allocate

    return allocate(sensitivity, kind, ratio, sizes, config.layer_spread)


def _plan_block(scores, config, ratio, ranges, original_counts, kv_heads, sensitivity=None) -> Plan:
    plan = Plan()
    attn_kind = attention_kind(config)
    kinds = [k for k, on in ((attn_kind, config.prune_attn), ("mlp", config.prune_mlp)) if on]
    removals = None
    if config.allocation == "standardized" and kinds:     # one ranking over every pruned kind and layer
        pool = pd.concat([scores[(scores.kind == k) & scores.layer.isin(list(ranges["mlp" if k == "mlp" else "attn"]))]
                          for k in kinds])
        removals = standardized_removals(pool, ratio)
    for kind in kinds:
        range_kind = "mlp" if kind == "mlp" else "attn"
        ratios = layer_ratios(scores, config, ratio, ranges[range_kind], kind, original_counts, sensitivity,
                              removals)
        if kind == "qhead":
            plan.qhead_keep = _plan_query_heads(scores, ratios, original_counts, kv_heads)
            continue
        target = plan.attn_keep if kind == "attn" else plan.mlp_keep
        by_layer = _rows_by_layer(scores[scores.kind == kind])
        subs = {layer: by_layer[layer] for layer in ranges[range_kind] if layer in by_layer}
        if config.scope == "local":
            for layer, sub in subs.items():
                n0 = original_counts.get((kind, layer), len(sub))
                keep = _keep_count(n0, ratios[layer])
                if kind == "mlp":
                    keep = _round_keep(keep, n0, int(config.round_to))
                target[layer] = _top(sub, min(len(sub), keep))
            continue
        # global: one ranking per kind across the layer range; each layer keeps its best group
        n0 = sum(original_counts.get((kind, layer), len(s)) for layer, s in subs.items())
        budget = max(len(subs), int(math.floor(n0 * (1.0 - ratio) + 1e-9)))
        pool = pd.concat(subs.values()) if subs else scores.iloc[:0]
        best = pool.sort_values(["score", "group"], ascending=[False, True]).groupby("layer").head(1)
        rest = pool.drop(best.index).sort_values(["score", "layer", "group"],
                                                 ascending=[False, True, True], kind="stable")
        chosen = _rows_by_layer(pd.concat([best, rest.iloc[: max(0, budget - len(best))]]))
        for layer in subs:                                   # each keeps at least its best group
            target[layer] = sorted(int(g) for g in chosen[layer].group)
    return plan


def _plan_channel(scores, ratio, original_counts, multiple_of: int) -> Plan:
    """Keep the best hidden channels, a multiple of `multiple_of` of them (the head count), since
    transformers requires hidden_size % num_attention_heads == 0 to load a plain config."""
    sub = scores[scores.kind == "hidden"]
    if sub.empty:
        raise ValueError("channel strategy needs hidden-channel scores (score with kinds incl. 'hidden')")
    n0 = original_counts.get(("hidden", -1), len(sub))
    keep = min(len(sub), _keep_count(n0, ratio))
    keep = max(multiple_of, keep // multiple_of * multiple_of)
    return Plan(hidden_keep=_top(sub, keep))


def _plan_layers(scores, ratio, ranges, original_counts) -> Plan:
    candidates = sorted(set(ranges["attn"]) | set(ranges["mlp"]))
    block = scores[scores.kind.isin(["attn", "mlp"]) & scores.layer.isin(candidates)]
    per_layer = block.groupby("layer").score.sum()
    n0 = original_counts.get(("layer", -1), len(per_layer))
    n_drop = min(len(per_layer), max(0, len(per_layer) - _keep_count(n0, ratio)))   # same rounding as block
    drop = per_layer.sort_values(kind="stable").index[:n_drop]
    return Plan(drop_layers=sorted(int(i) for i in drop))


@dataclass(frozen=True)
class ModelShape:
    """What planning needs to know of the model besides the scores."""

    n_layers: int
    kv_heads: dict[int, int]
    channel_multiple: int      # kept hidden channels are a multiple of this (the head count)


def model_shape(model) -> ModelShape:
    n_layers = len(layers_of(model))
    return ModelShape(n_layers, {i: attention_shape(model, i)[1] for i in range(n_layers)},
                      int(getattr(model.config, "num_attention_heads", 1) or 1))


def plan_for_ratio(scores: pd.DataFrame, config: PruneConfig, ratio: float, shape: ModelShape,
                   original_counts: dict | None = None, sensitivity: pd.DataFrame | None = None) -> Plan:
    """The plan removing `ratio` of the groups (of the original counts, when given).

    sensitivity: `sensitivity.layer_sensitivity` output, used by `allocation="sensitivity"`."""
    original_counts = original_counts or {}
    ranges = layer_ranges(config, shape.n_layers)
    if config.strategy == "block":
        return _plan_block(scores, config, ratio, ranges, original_counts, shape.kv_heads, sensitivity)
    if config.strategy == "channel":
        return _plan_channel(scores, ratio, original_counts, shape.channel_multiple)
    return _plan_layers(scores, ratio, ranges, original_counts)


def params_removed(model, scores: pd.DataFrame, plan: Plan) -> int:
    """Parameters the plan removes, counted from the groups' n_params (no model is built)."""
    if plan.drop_layers:
        layers = layers_of(model)
        removed = sum(sum(p.numel() for p in layers[i].parameters()) for i in plan.drop_layers)
    else:
        removed = int(plan.removed_groups(scores[scores.kind != "hidden"]).n_params.sum())
    if plan.hidden_keep is not None:
        counts = group_param_counts(model, hidden_family(model))
        keep = torch.zeros(len(counts), dtype=torch.bool)
        keep[plan.hidden_keep] = True
        removed += int(counts[~keep].sum())
    return removed


def _merge(a: Plan, b: Plan) -> Plan:
    return Plan(attn_keep={**a.attn_keep, **b.attn_keep}, qhead_keep={**a.qhead_keep, **b.qhead_keep},
                mlp_keep={**a.mlp_keep, **b.mlp_keep}, hidden_keep=a.hidden_keep or b.hidden_keep,
                drop_layers=sorted(set(a.drop_layers) | set(b.drop_layers)))


def plan_for_params(model, scores: pd.DataFrame, config: PruneConfig, n_remove: int,
                    original_counts: dict | None = None,
                    sensitivity: pd.DataFrame | None = None) -> tuple[Plan, float]:
    """Solve for the group ratio whose plan removes closest to `n_remove` parameters.

    With `attn_share`, attention and MLP are solved separately: attention gives as close to
    attn_share * n_remove as its group sizes allow, the MLPs whatever remains (attn_share=0 prunes
    MLPs only, 1 attention only), so the total stays `n_remove` even where attention's steps are coarse.
    """
    if config.attn_share is not None and config.strategy == "block":
        parts, ratios = Plan(), []
        n = int(round(n_remove * config.attn_share))
        for only_attn in (True, False):
            if n > 0 and (only_attn or config.attn_share < 1.0):
                sub = copy.copy(config)
                sub.attn_share, sub.prune_attn, sub.prune_mlp = None, only_attn, not only_attn
                plan, ratio = plan_for_params(model, scores, sub, n, original_counts, sensitivity)
                parts, ratios = _merge(parts, plan), ratios + [ratio]
            if only_attn:
                n = n_remove - params_removed(model, scores, parts)   # what the MLPs still owe
        return parts, max(ratios, default=0.0)
    shape = model_shape(model)

    def plan_at(r):
        return plan_for_ratio(scores, config, r, shape, original_counts, sensitivity)

    def removed_at(r):
        return params_removed(model, scores, plan_at(r))

    lo, hi = 0.0, 0.999
    if removed_at(hi) < n_remove:
        raise ValueError(
            f"cannot remove {n_remove:,} parameters with strategy {config.strategy!r} in the "
            "chosen layer ranges; widen the ranges or lower the target")
    for _ in range(40):
        mid = (lo + hi) / 2
        if removed_at(mid) >= n_remove:
            hi = mid
        else:
            lo = mid
    best = min((lo, hi), key=lambda r: abs(removed_at(r) - n_remove))
    return plan_at(best), best


def make_plan(model, scores: pd.DataFrame, config: PruneConfig,
              sensitivity: pd.DataFrame | None = None, input_ids: torch.Tensor | None = None) -> Plan:
    """One-step plan from `scores`: `config.amount` of groups, or of the model's parameters (what
    the dashboard marks on the heatmap before pruning). With
    `allocation="sensitivity"` and calibration `input_ids` (no `sensitivity` given), the layers'
    sensitivities are measured on the uniform plan first, as prune_model does. With
    `hidden_share`, the hidden channels are planned on their activation scores (`hidden_scores`:
    from `scores`, else measured on `input_ids`) and attention and the MLPs on `scores` for what
    remains, each of their groups counted narrower by the hidden channels' cut: prune_model scores
    them again after that cut, so its choice can differ a little."""
    from .stats import count_params

    config.validate(len(layers_of(model)))
    if config.hidden_share:
        from dataclasses import replace

        hidden = make_plan(model, hidden_scores(model, input_ids, scores), hidden_stage(config))
        n_total = count_params(model)["params"]
        width = model.model.embed_tokens.weight.shape[1]
        owed = n_total * config.amount - params_removed(model, scores, hidden)
        rest = replace(config, hidden_share=0.0, amount=min(max(owed, 1.0) / n_total * width
                                                           / len(hidden.hidden_keep), MAX_SHARE - 1e-6))
        return _merge(hidden, make_plan(model, scores, rest, sensitivity, input_ids))
    if config.allocation == "sensitivity" and sensitivity is None and input_ids is not None:
        from .activations import input_statistics
        from .sensitivity import config_sensitivity

        uniform = make_plan(model, scores, config)
        stats = input_statistics(model, input_ids) if config.uses_means else None
        sensitivity = config_sensitivity(model, input_ids, uniform, stats, config)
    if config.by_params:
        n_remove = int(round(count_params(model)["params"] * config.amount))
        return plan_for_params(model, scores, config, n_remove, sensitivity=sensitivity)[0]
    return plan_for_ratio(scores, config, config.amount, model_shape(model), sensitivity=sensitivity)


# ----------------------------------------------------------------------------- slicing

def _drop_layers(model, drop: list[int]) -> None:
    config = model.config
    kept = [i for i in range(len(layers_of(model))) if i not in set(drop)]
    if not kept:
        raise ValueError("a plan may not remove every decoder layer")
    model.model.layers = nn.ModuleList([layers_of(model)[i] for i in kept])
    for new_idx, layer in enumerate(layers_of(model)):
        for module in (layer, layer.self_attn):
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_idx
    layer_types = getattr(config, "layer_types", None)
    if isinstance(layer_types, list) and len(layer_types) >= len(kept):
        config.layer_types = [layer_types[i] for i in kept]
    config.num_hidden_layers = len(kept)


def layer_widths(model) -> pd.DataFrame:
    """Per layer: query heads, KV heads, head_dim, MLP width (what a bar chart shows)."""
    arch = arch_of(model)
    rows = []
    for i, layer in enumerate(layers_of(model)):
        n_q, n_kv, head_dim = arch.attention_shape(layer)
        rows.append({"layer": i, "heads": n_q, "kv_heads": n_kv, "head_dim": head_dim,
                     "intermediate_size": arch.mlp_width(layer)})
    return pd.DataFrame(rows)


def sync_config(model) -> None:
    """Make config.json describe the sliced model.

    When every layer has the same widths and the hidden size stays a multiple of the head count
    (transformers validates that), the plain fields are updated and `from_pretrained` loads it.
    Otherwise the plain fields keep their previous, valid values and `pruning.layer_widths` records
    each layer's widths for `pruner.load_pruned`.
    """
    config = model.config
    widths = layer_widths(model)
    first = widths.iloc[0]
    config.head_dim = int(first.head_dim)
    config.hidden_size = int(model.model.embed_tokens.weight.shape[1])
    record = dict(getattr(config, "pruning", None) or {})
    uniform = all(widths[c].nunique() == 1 for c in ("heads", "kv_heads", "intermediate_size"))
    if uniform and config.hidden_size % int(first.heads) == 0:
        config.num_attention_heads = int(first.heads)
        config.num_key_value_heads = int(first.kv_heads)
        config.intermediate_size = int(first.intermediate_size)
        record.pop("layer_widths", None)
    else:
        record["layer_widths"] = [
            {"heads": int(w.heads), "kv_heads": int(w.kv_heads),
             "intermediate_size": int(w.intermediate_size)} for w in widths.itertuples()]
    eps = _norm_eps_overrides(model)
    if eps:
        record["norm_eps"] = eps
    else:
        record.pop("norm_eps", None)
    config.pruning = record


def _norm_eps_overrides(model) -> dict[str, float]:
    """Norms whose epsilon differs from config.rms_norm_eps (rescaled when sliced: OLMo 2's q/k
    norms over all heads; head-dim q/k norms after hidden channels go), for `load_pruned`."""
    base = float(getattr(model.config, "rms_norm_eps", 0.0) or 0.0)
    out = {}
    for name, module in model.named_modules():
        eps = norm_eps(module)
        if eps is not None and "norm" in name and abs(eps - base) > 1e-12 * max(base, 1e-30):
            out[name] = eps
    return out


def _add_zero_biases(model, blocks: set[str]) -> None:
    """A config has one bias switch per block (attention_bias / mlp_bias) for all its projections,
    so once one layer carries a compensation bias every projection of that block needs one."""
    arch = arch_of(model)
    for block in blocks:
        for layer in layers_of(model):
            for path in arch.bias_paths(block):
                linear = layer.get_submodule(path)
                if linear.bias is None:
                    w = linear.weight
                    linear.bias = nn.Parameter(torch.zeros(linear.out_features, dtype=w.dtype, device=w.device),
                                               requires_grad=w.requires_grad)
        setattr(model.config, arch.attn_bias_flag if block == "attn" else arch.mlp_bias_flag, True)


def check_compensation(model, blocks: set[str]) -> None:
    """Raise unless the family's config can carry o_proj / down_proj biases for `blocks`."""
    arch = arch_of(model)
    missing = sorted(b for b in blocks if not arch.can_compensate(b))
    if missing:
        what = {"attn": "o_proj", "mlp": "down_proj"}
        raise ValueError(f"bias compensation is not available for {arch.name}: its config has no switch "
                         f"that gives {', '.join(what[b] for b in missing)} a bias, so the export would "
                         "not load in plain transformers. Prune without compensation.")


def plan_families(model, plan: Plan) -> list[tuple[Family, list[int]]]:
    """(family, kept groups) for every attention / MLP layer part a plan changes, layer order."""
    parts = []
    for kind, keep in (("qhead", plan.qhead_keep), ("attn", plan.attn_keep), ("mlp", plan.mlp_keep)):
        parts += [(family(model, kind, int(layer)), list(kept)) for layer, kept in keep.items()]
    return sorted(parts, key=lambda p: p[0].layer)


def _refit_and_slice(model, fam: Family, kept, stream) -> None:
    """Slice a group family and refit its last weight (down_proj / o_proj) on the stream's inputs
    (pruner/refit.py)."""
    from .refit import kept_input_sums, refit_solution

    linear = model.get_submodule(fam.last.module)
    weight, bias = refit_solution(linear.weight.data, kept_input_sums(stream, fam.layer, linear, fam.kept_inputs(kept)))
    fam.slice(model, kept)
    linear = model.get_submodule(fam.last.module)
    dtype = linear.weight.dtype
    linear.weight.data = weight.to(linear.weight.device, dtype).contiguous()
    linear.bias = nn.Parameter(bias.to(linear.weight.device, dtype), requires_grad=linear.weight.requires_grad)


def apply_plan(model, plan: Plan, input_stats: dict | None = None, recompute_ids: torch.Tensor | None = None,
               in_place: bool = False, refit_ids: torch.Tensor | None = None):
    """The pruned model: a deep copy of `model` (the original is never touched), or `model`
    itself with `in_place=True` (when the caller owns it, e.g. the CLI).

    input_stats: {(layer, "attn" | "mlp"): ChannelStats} from `activations.input_statistics`
    on this model; when given, each removed head's / channel's mean contribution is folded into
    the o_proj / down_proj bias (FLAP's bias compensation).
    recompute_ids: calibration tokens; when given, the means are instead measured again before
    each layer is cut, on the copy whose earlier layers are already pruned and compensated
    (one calibration forward per pruned layer; `input_stats`, if given, serves the first).
    refit_ids: calibration tokens; when given, each pruned o_proj's / down_proj's kept columns and
    a bias are refitted by damped least squares (pruner/refit.py) on the inputs the partly pruned
    copy feeds it, carried through the layers once (no means are needed then).
    """
    compensate = input_stats is not None or recompute_ids is not None or refit_ids is not None
    parts = plan_families(model, plan)
    blocks = {fam.block for fam, _ in parts}
    if compensate:
        check_compensation(model, blocks)
    for fam, kept in parts:
        fam.check_keep(model, kept)

    pruned = model if in_place else copy.deepcopy(model)
    stats, fresh = input_stats, input_stats is not None      # fresh: measured on the copy as it is now
    cut = sorted({fam.layer for fam, _ in parts})
    stream = None
    if refit_ids is not None and parts:
        from .refit import LayerStream

        stream = LayerStream(pruned, refit_ids)
    for layer in range(cut[-1] + 1) if stream is not None else cut:
        if layer not in cut:
            stream.advance()                                     # carried through an uncut layer
            continue
        if recompute_ids is not None and not fresh and stream is None:
            from .activations import input_statistics

            stats = input_statistics(pruned, recompute_ids)      # on the partly pruned copy
        fresh = False                                            # this layer's cut changes them
        for fam, kept in parts:
            if fam.layer != layer:
                continue
            fam = family(pruned, fam.kind, layer)                # the copy's own (current) shapes
            if stream is not None:
                _refit_and_slice(pruned, fam, kept, stream)
                continue
            if stats is not None:
                fam.compensate(pruned, kept, stats[(layer, fam.block)].mean)
            fam.slice(pruned, kept)
        if stream is not None:
            stream.advance()
    if compensate:
        _add_zero_biases(pruned, blocks)
    if plan.hidden_keep is not None:
        hidden_family(pruned).slice(pruned, plan.hidden_keep)
    if plan.drop_layers:
        _drop_layers(pruned, plan.drop_layers)
    sync_config(pruned)
    return pruned


# ----------------------------------------------------------------------------- the whole loop

@dataclass
class PruneResult:
    model: object                 # the pruned copy
    plans: list[Plan]             # one per iterative step
    scores: pd.DataFrame          # the last step's scores (on the model that step pruned)
    group_ratios: list[float]     # the group ratio each step used
    report: dict                  # params / MACs before and after (see `prune_report`)
    widths_before: pd.DataFrame
    widths_after: pd.DataFrame
    sensitivity: pd.DataFrame | None = None   # per-layer loss increases (allocation="sensitivity")
    notes: list[str] = field(default_factory=list)   # what the plan could not do as asked


def attention_params(model) -> int:
    """Parameters in the attention groups of every layer (what pruning attention can remove)."""
    from .groups import describe_groups

    groups = describe_groups(model)
    return int(groups.loc[groups.kind == "attn", "params"].sum())


def attention_share_note(asked: float | None, attn_removed: int, removed: int) -> str | None:
    """A note where attention's share of the removed parameters is far from the one asked (its
    groups are coarse: on the default model one query head per KV group, 3 of 9, goes at once).
    attn_removed: the attention groups' parameters before minus after (biases included)."""
    if asked is None or removed <= 0:
        return None
    got = max(attn_removed, 0) / removed     # compensation's added o_proj biases alone: a few negative
    if abs(got - asked) <= 0.02:
        return None
    return (f"attention's share of the removed parameters is {100 * got:.0f}%, not the {100 * asked:.0f}% "
            "asked: its groups are too coarse for that budget, so the nearest plan gives that and the MLPs "
            "remove the rest")


def score_kinds(config: PruneConfig) -> tuple[str, ...]:
    """The group kinds a plan of `config` reads scores of (an MLP-only budget, attn_share 0, needs
    no attention scores: scoring skips them)."""
    if config.strategy == "channel":
        return ("hidden",)
    if config.strategy == "layer":
        return ("attn", "mlp")
    kinds = []
    if config.prune_attn and config.attn_share != 0.0:
        kinds.append(attention_kind(config))
    if config.prune_mlp and config.attn_share != 1.0:
        kinds.append("mlp")
    return tuple(kinds)


def _original_counts(scores: pd.DataFrame, config: PruneConfig, n_layers: int) -> dict:
    counts = {(k, int(l)): int(n) for (k, l), n in scores.groupby(["kind", "layer"]).size().items()}
    ranges = layer_ranges(config, n_layers)
    counts[("layer", -1)] = len(set(ranges["attn"]) | set(ranges["mlp"]))
    return counts


def _remap_ranges(config: PruneConfig, origin: list[int], n_layers0: int) -> PruneConfig:
    """Layer ranges given in original indices, expressed in the current (layer-dropped) model."""
    if len(origin) == n_layers0:
        return config
    ranges = layer_ranges(config, n_layers0)
    new = copy.copy(config)
    for name, kind in (("attn_layers", "attn"), ("mlp_layers", "mlp")):
        rng = ranges[kind]
        start = sum(1 for o in origin if o < rng.start)
        end = sum(1 for o in origin if o < rng.stop)
        setattr(new, name, (start, end))
    return new


def model_size(model, seq_len: int = 128) -> dict:
    """Params (total, non-embedding) and MACs per token: one side of a before / after report."""
    from .stats import count_params, macs_per_token

    return {**count_params(model), "macs_per_token": macs_per_token(model, seq_len)}


def prune_report(before, after, seq_len: int = 128) -> dict:
    """Params (total, non-embedding) and MACs per token of two models (or their `model_size`
    dicts), and the removed share."""
    b = before if isinstance(before, dict) else model_size(before, seq_len)
    a = after if isinstance(after, dict) else model_size(after, seq_len)
    return {
        "params_before": b["params"], "params_after": a["params"],
        "params_non_embedding_before": b["params_non_embedding"],
        "params_non_embedding_after": a["params_non_embedding"],
        "ratio_params_removed": 1.0 - a["params"] / b["params"],
        "ratio_non_embedding_removed": 1.0 - a["params_non_embedding"] / b["params_non_embedding"],
        "macs_per_token_before": b["macs_per_token"],
        "macs_per_token_after": a["macs_per_token"],
    }


def prune_model(model, input_ids, score_config=None, prune_config: PruneConfig | None = None,
                progress=None, in_place: bool = False, scores: pd.DataFrame | None = None) -> PruneResult:
    """Score, plan and slice `iterative_steps` times. The original `model` is never modified,
    unless `in_place=True` (the caller owns it: no copy of the model is made then).

    input_ids: (n_samples, seq_len) calibration tokens (unused by random / l1 / l2).
    progress: optional callable(step, total_steps, message) for UIs.
    scores: the unpruned model's scores from `score(model, input_ids, score_config)` when the
    caller already has them (a Score step before Prune): the first step uses them instead of
    scoring again; later iterative steps score the partly pruned model.
    """
    from dataclasses import replace

    from .importance import ScoreConfig, score
    from .stats import count_params

    score_config = score_config or ScoreConfig()
    prune_config = prune_config or PruneConfig()
    n_layers0 = len(layers_of(model))
    why = unreachable(model, prune_config)          # validates the config for this model first
    if why:
        raise ValueError(why)
    score_config = replace(score_config, kinds=score_kinds(prune_config))
    score_config.validate()
    from .criteria import criterion as registered

    if registered(score_config.criterion).layer_level and prune_config.strategy != "layer":
        raise ValueError(f"{score_config.criterion} scores whole decoder layers: use the layer strategy")
    if prune_config.hidden_share:
        return _hidden_then_block(model, input_ids, score_config, prune_config, progress, in_place, scores)
    steps = int(prune_config.iterative_steps)
    size_before, widths_before = model_size(model), layer_widths(model)
    attn_before = attention_params(model) if prune_config.attn_share is not None else None
    params0 = size_before["params"]
    current, origin = model, list(range(n_layers0))
    given = None
    if scores is not None:
        given = scores[scores.kind.isin(score_config.kinds)].reset_index(drop=True)
        if set(given.kind) != set(score_config.kinds):
            given = None                            # kinds missing: score as usual
    plans, ratios, counts0, scores, sensitivities = [], [], None, None, []
    for step in range(1, steps + 1):
        step_config = replace(score_config, seed=score_config.seed + step - 1)
        if step == 1 and given is not None:
            scores = given
        else:
            if progress:
                progress(step - 1, steps, f"step {step}/{steps}: scoring ({score_config.criterion})")
            scores = score(current, input_ids, step_config)
        config_now = _remap_ranges(prune_config, origin, n_layers0)
        if counts0 is None:
            counts0 = _original_counts(scores, prune_config, n_layers0)

        def plan_step(sens=None):
            if prune_config.by_params:
                goal = params0 * prune_config.amount * step / steps
                needed = int(round(goal - (params0 - count_params(current)["params"])))
                return plan_for_params(current, scores, config_now, max(0, needed), sensitivity=sens)
            r = prune_config.amount * step / steps
            return plan_for_ratio(scores, config_now, r, model_shape(current), counts0, sens), r

        plan, ratio = plan_step()
        stats = None
        if prune_config.uses_means:
            from .activations import input_statistics

            if progress:
                progress(step - 1, steps, f"step {step}/{steps}: activation means for compensation")
            stats = input_statistics(current, input_ids)
        if prune_config.allocation == "sensitivity":
            from .sensitivity import config_sensitivity

            if progress:
                progress(step - 1, steps, f"step {step}/{steps}: per-layer sensitivity")
            sensitivity = config_sensitivity(current, input_ids, plan, stats, prune_config).assign(step=step)
            sensitivities.append(sensitivity)
            plan, ratio = plan_step(sensitivity)
        if progress:
            progress(step - 1, steps, f"step {step}/{steps}: slicing")
        origin = [o for i, o in enumerate(origin) if i not in set(plan.drop_layers)]
        current = apply_plan(current, plan, stats, input_ids if prune_config.recompute_means else None,
                             in_place=in_place or step > 1,      # later steps slice our own copy
                             refit_ids=input_ids if prune_config.refit else None)
        plans.append(plan)
        ratios.append(float(ratio))
    if progress:
        progress(steps, steps, "measuring")
    report = prune_report(size_before, current)
    notes = []
    if attn_before is not None:
        report["attn_params_removed"] = attn_before - attention_params(current)
        note = attention_share_note(prune_config.attn_share, report["attn_params_removed"],
                                    report["params_before"] - report["params_after"])
        notes += [note] if note else []
    return PruneResult(current, plans, scores, ratios, report, widths_before, layer_widths(current),
                       pd.concat(sensitivities, ignore_index=True) if sensitivities else None, notes)


def hidden_stage(config: PruneConfig) -> PruneConfig:
    """The first stage of a `hidden_share` plan: that share of the amount from hidden channels."""
    return PruneConfig(amount=config.amount * config.hidden_share, unit="parameters", strategy="channel")


# hidden channels are ranked by their activation (Minitron's embedding importance) whatever the
# recipe's criterion: on the default model (the default recipe with half its 20% from hidden channels,
# seed-0 self draw) first-order Taylor summed over a channel's weights gave 4.92x dense against 2.56x
HIDDEN_SCORING = ("activation", "last")


def hidden_scores(model, input_ids, scores: pd.DataFrame | None = None) -> pd.DataFrame:
    """The hidden channels' activation scores: those in `scores` where it has them, else measured."""
    from .importance import ScoreConfig, score

    if scores is not None:
        rows = scores[(scores.kind == "hidden") & (scores.criterion == HIDDEN_SCORING[0])]
        if not rows.empty:
            return rows
    if input_ids is None or input_ids.numel() == 0:
        raise ValueError("hidden channels are ranked by their activation: that needs calibration tokens")
    return score(model, input_ids, ScoreConfig(*HIDDEN_SCORING, kinds=("hidden",)))


def _hidden_then_block(model, input_ids, score_config, prune_config: PruneConfig, progress, in_place,
                       scores) -> PruneResult:
    """Minitron's widths: `hidden_share` of the removed parameters as hidden (embedding) channels,
    ranked by activation, first; then the block strategy, scored again on that narrower model by the
    recipe's criterion, removes the rest of the amount (a share of the original parameters)."""
    from dataclasses import replace

    def stage(prefix):
        return (lambda step, total, message: progress(step, total, prefix + message)) if progress else None

    given = hidden_scores(model, input_ids, scores)
    first = prune_model(model, input_ids, replace(score_config, criterion=HIDDEN_SCORING[0],
                                                  aggregation=HIDDEN_SCORING[1]),
                        hidden_stage(prune_config), stage("hidden channels: "), in_place, given)
    params0, params1 = first.report["params_before"], first.report["params_after"]
    owed = params0 * prune_config.amount - (params0 - params1)       # what attention and the MLPs remove
    notes = list(first.notes)
    if owed <= 0:       # a small model whose hidden channels go in coarse steps (a multiple of the heads)
        notes.append(f"the hidden channels alone removed {100 * (1 - params1 / params0):.1f}% of the parameters "
                     f"(they go {model_shape(first.model).channel_multiple} at a time), more than the {100 * prune_config.amount:g}% "
                     "asked, so attention and the MLPs removed nothing")
    rest = replace(prune_config, hidden_share=0.0, amount=max(owed, 1.0) / params1)
    second = prune_model(first.model, input_ids, score_config, rest, stage("then attention and MLP: "),
                         in_place=True)                                  # our own copy (or the caller's)
    before = {key: first.report[f"{key}_before"] for key in ("params", "params_non_embedding", "macs_per_token")}
    report = {**second.report, **prune_report(before, second.model)}
    report["hidden_params_removed"] = params0 - params1
    return replace(second, plans=first.plans + second.plans, group_ratios=first.group_ratios + second.group_ratios,
                   scores=pd.concat([first.scores, second.scores], ignore_index=True), report=report,
                   widths_before=first.widths_before, notes=notes + second.notes)
