"""Per-channel statistics of the inputs of o_proj and down_proj (the last weight of an attention
and an MLP block, wherever the family's `Arch` puts them) on calibration tokens, and of the
residual stream where linears read it (Minitron's embedding-channel importance).

They drive FLAP's fluctuation criterion (variance of a channel's input x the squared norm of its
weight column) and bias compensation (a removed channel's mean contribution W[:, c] * E[x_c] is
folded into the output bias, so the layer's mean output is unchanged on the calibration data).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .arch import arch_of
from .models import decoder_body, layers_of
from .resources import reusing_freed_memory


@dataclass
class ChannelStats:
    """Running float64 sums of one linear layer's input channels."""

    count: int
    total: torch.Tensor        # (in_features,) sum of x
    total_sq: torch.Tensor     # (in_features,) sum of x^2

    @property
    def mean(self) -> torch.Tensor:
        return self.total / max(1, self.count)

    @property
    def var(self) -> torch.Tensor:
        return (self.total_sq / max(1, self.count) - self.mean.square()).clamp_min(0.0)


def _add(stats: dict, key, x: torch.Tensor) -> None:
    """Add every token of x (..., channels) to the running sums under `key`."""
    x = x.detach().reshape(-1, x.shape[-1]).double()                 # (tokens, channels)
    entry = stats.get(key)
    if entry is None:
        zeros = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
        entry = stats[key] = ChannelStats(0, zeros, zeros.clone())
    entry.count += x.shape[0]
    entry.total += x.sum(0)
    entry.total_sq += x.square().sum(0)


def _input_hook(stats: dict, key):
    """A forward pre-hook adding a module's input to `stats[key]`."""
    return lambda module, args: _add(stats, key, args[0])


def _run_hooked(model, input_ids: torch.Tensor, batch_size: int, handles: list) -> None:
    """The decoder body (no vocabulary projection: no statistic reads the logits) over `input_ids`
    in batches, then the hooks that collected the statistics removed."""
    device = next(model.parameters()).device
    try:
        for batch in torch.split(input_ids, batch_size):
            decoder_body(model)(input_ids=batch.to(device), use_cache=False)
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
@reusing_freed_memory()
def input_statistics(model, input_ids: torch.Tensor, batch_size: int = 8) -> dict[tuple[int, str], ChannelStats]:
    """{(layer, "attn" | "mlp"): ChannelStats} of o_proj / down_proj inputs over every token."""
    stats: dict[tuple[int, str], ChannelStats] = {}
    handles = []
    arch = arch_of(model)
    for i, layer in enumerate(layers_of(model)):
        for block, path in (("attn", arch.o), ("mlp", arch.down)):
            handles.append(layer.get_submodule(path).register_forward_pre_hook(_input_hook(stats, (i, block))))
    _run_hooked(model, input_ids, batch_size, handles)
    return stats


@torch.no_grad()
@reusing_freed_memory()
def reader_statistics(model, input_ids: torch.Tensor, batch_size: int = 8) -> dict[tuple[int, str], ChannelStats]:
    """{(layer, "attn" | "mlp"): ChannelStats} of what each block's first linear reads from the
    residual stream (the normalized hidden states in a pre-norm family, Minitron's LN(X)), and
    {(-1, "head"): ...} of the output projection's input (the final norm's output), over every token."""
    stats: dict[tuple[int, str], ChannelStats] = {}
    handles = []
    arch = arch_of(model)
    for i, layer in enumerate(layers_of(model)):
        for block, paths in (("attn", arch.attn_inputs()), ("mlp", arch.mlp_inputs())):
            handles.append(layer.get_submodule(paths[0]).register_forward_pre_hook(_input_hook(stats, (i, block))))
    final_norm = decoder_body(model).norm           # its output is what the output projection reads
    handles.append(final_norm.register_forward_hook(lambda m, args, out: _add(stats, (-1, "head"), out)))
    _run_hooked(model, input_ids, batch_size, handles)
    return stats
