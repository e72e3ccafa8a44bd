"""Model statistics for before/after tables: parameters, MACs per token, weight memory."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from .models import unique_parameters


def count_params(model) -> dict:
    """Total and non-embedding parameters (tied weights counted once)."""
    total = sum(p.numel() for p in unique_parameters(model))
    embedding = model.model.embed_tokens.weight.numel()
    if model.lm_head.weight is not model.model.embed_tokens.weight:
        embedding += model.lm_head.weight.numel()
    return {"params": total, "params_non_embedding": total - embedding}


def weight_bytes(model) -> int:
    """Bytes held by parameters and buffers (tied weights once)."""
    params = sum(p.numel() * p.element_size() for p in unique_parameters(model))
    return params + sum(b.numel() * b.element_size() for b in model.buffers())


@torch.no_grad()
def macs_per_token(model, seq_len: int = 128) -> float:
    """Multiply-accumulates per token of one forward pass over `seq_len` tokens, counted by
    torch's FlopCounterMode (linear layers, attention matmuls, lm_head); MACs = FLOPs / 2."""
    device = next(model.parameters()).device
    ids = torch.zeros(1, seq_len, dtype=torch.long, device=device)
    counter = FlopCounterMode(display=False)
    with counter:
        model(input_ids=ids, use_cache=False)
    return counter.get_total_flops() / 2 / seq_len
