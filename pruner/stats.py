"""Model statistics for before/after tables: parameters, MACs per token, weight memory."""

from __future__ import annotations

import gc
import os
import threading
import time

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


def _attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of one scaled-dot-product attention, (B, H_q, S, D) queries over (B, H_kv, S_k, D)
    keys and values, H_kv <= H_q (grouped-query attention shares each key / value head): q k^T and
    p v for every query head. torch's own formula asserts H_q == H_kv before torch 2.13, and
    transformers hands the GQA shapes to the kernel on a GPU (it failed every CUDA prune)."""
    b, h_q, s_q, d = query_shape
    s_k, d_v = key_shape[-2], value_shape[-1]
    return 2 * b * h_q * s_q * s_k * (d + d_v)


ATTENTION_OPS = tuple(getattr(torch.ops.aten, name) for name in (
    "_scaled_dot_product_efficient_attention", "_scaled_dot_product_flash_attention",
    "_scaled_dot_product_cudnn_attention", "_scaled_dot_product_flash_attention_for_cpu")
    if hasattr(torch.ops.aten, name))


@torch.no_grad()
def macs_per_token(model, seq_len: int = 128) -> float:
    """Multiply-accumulates per token of one forward pass over `seq_len` tokens, counted by
    torch's FlopCounterMode (linear layers, attention matmuls, lm_head; the fused attention
    kernels by `_attention_flops`); MACs = FLOPs / 2."""
    device = next(model.parameters()).device
    ids = torch.zeros(1, seq_len, dtype=torch.long, device=device)
    counter = FlopCounterMode(display=False, custom_mapping={op: _attention_flops for op in ATTENTION_OPS})
    with counter:
        model(input_ids=ids, use_cache=False)
    return counter.get_total_flops() / 2 / seq_len


def release_freed_memory() -> None:
    """Hand memory that glibc keeps after frees back to the OS, so RSS growth is measurable."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def rss_bytes() -> int:
    """Current resident set size of this process (Linux; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


class PeakMemory:
    """Peak memory above the level at entry: the CUDA allocator's peak on GPU, else the process
    RSS sampled by a background thread every `interval` seconds."""

    def __init__(self, device, interval: float = 0.001):
        self.device, self.interval = torch.device(device), interval
        self.peak_above_start = 0

    def __enter__(self):
        gc.collect()
        release_freed_memory()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
        else:
            self.start = rss_bytes()
            self._peak, self._stop = self.start, False
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def _poll(self):
        while not self._stop:
            self._peak = max(self._peak, rss_bytes())
            time.sleep(self.interval)

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_above_start = torch.cuda.max_memory_allocated(self.device) - self.start
        else:
            self._stop = True
            self._thread.join()
            self.peak_above_start = max(self._peak, rss_bytes()) - self.start
        return False
