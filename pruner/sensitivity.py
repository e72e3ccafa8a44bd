"""Per-layer sensitivity to a pruning plan, and the per-layer ratios it implies.

Sensitivity of (kind, layer): the calibration loss increase when only that layer's part of a
plan is applied and every other layer stays dense. It is measured without slicing: the removed
heads' / channels' inputs to o_proj / down_proj are replaced by zero, or by their calibration
means when bias compensation is on -- exactly what slicing (+ folding W[:, removed] @ E[x] into
the bias) computes, since a removed head or MLP channel reaches the rest of the model only
through those inputs. With the least-squares refit (`refit=True`), o_proj's / down_proj's output is
replaced by what its refitted kept columns and bias give (pruner/refit.py, fitted on the layer's
dense inputs), as the refitted slice computes.

Allocation: with each layer's loss increase modelled as s_l * (r_l / r_probe)^2, minimising the
sum for a fixed number of removed groups gives r_l proportional to 1 / s_l; each ratio is kept
within (1 -/+ spread) of the uniform ratio (OWL-style bounds: single-layer probes on a few
calibration tokens are noisy, and no layer may be emptied), by water filling so the total holds.
"""

from __future__ import annotations

import pandas as pd
import torch

from .groups import Family, family


def plan_parts(plan) -> list[tuple[str, int, list[int]]]:
    """(kind, layer, kept groups) for every layer a plan changes."""
    parts = []
    for kind, keep in (("attn", plan.attn_keep), ("qhead", plan.qhead_keep), ("mlp", plan.mlp_keep)):
        parts += [(kind, int(layer), list(kept)) for layer, kept in sorted(keep.items())]
    return parts


def _tail_nll_sum(stream, start: int, batch: int, hidden: torch.Tensor, labels: torch.Tensor) -> float:
    """Summed next-token NLL of one calibration batch whose hidden states `hidden` (b, L, d) enter
    decoder layer `start`: the remaining layers (with the keyword arguments the stream recorded),
    the final norm and the family's head (its scaling / soft-capping), as the model's forward."""
    from .importance import _ce_sum
    from .models import decoder_body, head_logits

    layers = stream.layers
    for index in range(start, len(layers)):
        out = layers[index](hidden, **stream.kwargs[batch][index])
        hidden = out[0] if isinstance(out, tuple) else out                  # (b, L, d)
    hidden = decoder_body(stream.model).norm(hidden)[:, :-1].flatten(0, 1)   # (b*(L-1), d)
    return float(_ce_sum(lambda h: head_logits(stream.model, h), hidden, labels[:, 1:].flatten()))


def _masked(linear, fam: Family, kept: list[int], layer: int, input_stats: dict | None):
    """Forward pre-hook: the removed inputs of `linear` replaced by zero, or by their calibration
    means (mean compensation), as slicing computes."""
    mask = torch.zeros(linear.in_features, dtype=torch.bool, device=linear.weight.device)
    mask[fam.kept_inputs(kept).to(mask.device)] = True
    fill = torch.zeros(linear.in_features, dtype=linear.weight.dtype, device=mask.device)
    if input_stats is not None:
        fill = input_stats[(layer, fam.block)].mean.to(fill)

    def probe(module, args):
        x = args[0]                                                       # (B, L, in)
        return (torch.where(mask, x, fill.to(x.dtype)),) + tuple(args[1:])
    return probe


def _refitted(stream, layer: int, linear, kept_inputs: torch.Tensor):
    """Forward hook: `linear`'s output as its refitted kept columns and bias give it, fitted on
    its inputs over the stream (which is at `layer`: the dense model's)."""
    from .refit import kept_input_sums, refit_solution

    kept = kept_inputs.to(linear.weight.device)
    weight, bias = refit_solution(linear.weight, kept_input_sums(stream, layer, linear, kept))
    weight, bias = weight.to(linear.weight), bias.to(linear.weight)     # (out, k), (out,)

    def probe(module, args, output):
        x = args[0]                                                       # (B, L, in)
        return torch.nn.functional.linear(x.index_select(-1, kept), weight.to(x.dtype), bias.to(x.dtype))
    return probe


@torch.no_grad()
def layer_sensitivity(model, input_ids: torch.Tensor, plan, input_stats: dict | None = None,
                      batch_size: int = 8, max_tokens: int | None = 4096,
                      refit: bool = False) -> pd.DataFrame:
    """Loss increase of applying each layer's part of `plan` alone -> tidy DataFrame with
    columns kind, layer, kept, removed, loss, loss_increase (the model is left unchanged).

    input_stats: `activations.input_statistics(model, input_ids)` for compensated probes.
    max_tokens: probe on the first calibration rows up to this many tokens; None uses them all.
    refit: probe the layer as the least-squares refit leaves it (pruner/refit.py: the kept columns
    of o_proj / down_proj and a bias fitted on this layer's dense inputs, which are its inputs
    when it is pruned alone) instead of with mean compensation; `input_stats` is not needed.

    The layers before a probed one are dense, so their output is computed once: the calibration
    batches are carried through the decoder layer by layer (`refit.LayerStream`), and each probe
    runs only from its layer on (layer l of N costs (N - l) / N of a pass plus the head): 1.49x
    faster than a full forward per probe for the default recipe's probes on the default model
    (bench/sensitivity_probes.py; the head's vocabulary projection is a third of a probe's cost).
    """
    from .refit import LayerStream

    if max_tokens is not None:
        input_ids = input_ids[: max(1, max_tokens // input_ids.shape[1])]   # (n, L) -> (n', L)
    device = next(model.parameters()).device
    labels = [b.to(device) for b in torch.split(input_ids, batch_size)]    # per batch: (b, L)
    stream = LayerStream(model, input_ids, batch_size)
    n_predicted = input_ids.shape[0] * (input_ids.shape[1] - 1)

    parts = plan_parts(plan)
    last = len(stream.layers) - 1
    losses: dict[tuple[str, int], float] = {}
    for layer in range(last + 1):
        for kind, _, kept in [p for p in parts if p[1] == layer]:
            fam: Family = family(model, kind, layer)
            linear = model.get_submodule(fam.last.module)            # o_proj / down_proj
            if refit:
                handle = linear.register_forward_hook(_refitted(stream, layer, linear, fam.kept_inputs(kept)))
            else:
                handle = linear.register_forward_pre_hook(_masked(linear, fam, kept, layer, input_stats))
            try:
                losses[kind, layer] = sum(_tail_nll_sum(stream, layer, b, h, labels[b])
                                          for b, h in enumerate(stream.hidden)) / n_predicted
            finally:
                handle.remove()
        if layer < last:
            stream.advance()                  # the base loss below runs from the last layer
    base = sum(_tail_nll_sum(stream, last, b, h, labels[b])
               for b, h in enumerate(stream.hidden)) / n_predicted
    rows = [{"kind": kind, "layer": layer, "kept": len(kept),
             "removed": family(model, kind, layer).n_groups - len(kept),
             "loss": losses[kind, layer], "loss_increase": losses[kind, layer] - base}
            for kind, layer, kept in parts]
    return pd.DataFrame(rows, columns=["kind", "layer", "kept", "removed", "loss", "loss_increase"])


def config_sensitivity(model, input_ids: torch.Tensor, plan, input_stats: dict | None,
                       config) -> pd.DataFrame:
    """`layer_sensitivity` as a PruneConfig asks for it (its probe tokens; refitted probes when the
    refit is on): what prune_model and make_plan both measure."""
    return layer_sensitivity(model, input_ids, plan, input_stats, max_tokens=config.probe_tokens,
                             refit=config.refit)


MAX_LAYER_RATIO = 0.95      # no allocation removes more than this share of one layer's groups


def floored_sensitivity(sensitivity: pd.DataFrame, kind: str, layers) -> dict[int, float]:
    """layer -> the measured loss increase of pruning its `kind` groups alone, over `layers`: the
    mean where a layer was not measured, at least 1% of the largest (a layer that pruning happens
    to help is not emptied at once). {} where nothing of `kind` was measured."""
    sub = sensitivity[sensitivity.kind == kind].set_index("layer").loss_increase
    if sub.empty:
        return {}
    floor = max(1e-6, 0.01 * float(sub.max()))
    return {layer: max(floor, float(sub.get(layer, sub.mean()))) for layer in layers}


def allocate(sensitivity: pd.DataFrame, kind: str, ratio: float, sizes: dict[int, int],
             spread: float) -> dict[int, float]:
    """Per-layer ratios of `kind` over the layers in `sizes` (layer -> group count) that remove
    `ratio` of all their groups: r_l = c / s_l, clipped to ratio * (1 -/+ spread) (at most
    MAX_LAYER_RATIO), with c found by water filling so the total is kept.

    Layers without a measurement get the mean sensitivity; loss increases below 1% of the
    largest are floored there (a layer that pruning happens to help is not emptied at once).
    """
    ratio = float(ratio)
    s = floored_sensitivity(sensitivity, kind, sizes)
    if not s or ratio <= 0.0 or spread <= 0.0:
        return dict.fromkeys(sizes, ratio)
    low, high = ratio * (1.0 - spread), max(ratio, min(MAX_LAYER_RATIO, ratio * (1.0 + spread)))
    total = ratio * sum(sizes.values())

    def ratios(c):
        return {layer: min(high, max(low, c / s[layer])) for layer in sizes}

    lo, hi = 0.0, high * max(s.values())
    for _ in range(80):
        mid = (lo + hi) / 2
        removed = sum(sizes[layer] * r for layer, r in ratios(mid).items())
        lo, hi = (mid, hi) if removed < total else (lo, mid)
    return ratios(hi)
