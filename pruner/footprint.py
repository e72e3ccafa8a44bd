"""The transient memory peak of each heavy step, stated before it starts, from the model's size
and the step's settings. A server admits a step only when its peak fits (components/store.py).

Each estimate is what the step allocates on top of what is already held (the shared original),
including the result it returns: a pruned copy, a LoRA copy, a merged copy. They are upper
bounds on purpose; `bench/step_peaks.py` measures every step's real peak beside its estimate.
"""

from __future__ import annotations

from .importance import (FISHER_CRITERIA, activation_bytes, layer_activation_bytes, logit_chunk_bytes,
                         loss_input_bytes)
from .models import full_finetune_weights, layers_of
from .stats import weight_bytes

def _shape(model) -> tuple[int, int, int, int]:
    """(layers, hidden, widest MLP, vocabulary) of a loaded model."""
    from .arch import arch_of

    arch = arch_of(model)
    hidden = model.model.embed_tokens.weight.shape[1]
    inter = max(arch.mlp_width(layer) for layer in layers_of(model))
    return len(layers_of(model)), hidden, inter, model.model.embed_tokens.weight.shape[0]


def forward_bytes(model, tokens: int, logits_tokens: int | None = None) -> int:
    """One no-grad forward over `tokens` tokens: a few hidden-size and MLP-width activations of
    one layer at a time, plus float32 logits for `logits_tokens` positions (all of them unless
    given) with the copies a loss makes of them (float32 cast, log-softmax, and the heap's
    fragmentation inside a reuse phase: 4.15 per logit measured by bench/step_peaks.py, 4.5 stated;
    3.5 before forwards reused freed memory)."""
    _, hidden, inter, vocab = _shape(model)
    elem = next(model.parameters()).element_size()
    logits = tokens if logits_tokens is None else logits_tokens
    return int(tokens * (8 * hidden + 4 * inter) * elem + logits * 4.5 * vocab * 4)


def measure_peak(model) -> int:
    """The page's measurements of one model: the quick perplexity's 8 x 128-token batches (full
    logits) dominate; the decode-speed runs hold a small KV cache."""
    return forward_bytes(model, 8 * 128)


def load_peak(weight_bytes_estimate: int, default_gguf: bool = False) -> int:
    """Loading a model: its weights, plus the dequantized GGUF copy for the built-in default."""
    return int(weight_bytes_estimate * (2.0 if default_gguf else 1.2))


def score_peak(model, criterion: str, samples: int, seq_len: int, low_memory: bool = True) -> int:
    """Scoring on the shared original (no copy): activations kept for backward (layer inputs only
    in low-memory mode), one layer's gradients, float32 Fisher buffers for taylor-element2."""
    from .criteria import REGISTRY

    needs = REGISTRY[criterion].needs
    if not needs & {"gradient", "fisher"}:      # a no-grad forward where activations are read
        return forward_bytes(model, samples * seq_len) if needs & {"activations", "hidden states"} else 0
    layers, hidden, inter, vocab = _shape(model)
    elem = next(model.parameters()).element_size()
    tokens = samples * seq_len
    if low_memory:
        from .importance import ACCUMULATOR_SHARE

        kept = layers * tokens * hidden * elem + layer_activation_bytes(model, tokens) // layers
        kept += loss_input_bytes(model, tokens) + logit_chunk_bytes(model)
        fisher = ACCUMULATOR_SHARE * weight_bytes(model) if criterion in FISHER_CRITERIA else 0
    else:
        kept = activation_bytes(model, tokens)
        fisher = 4 * sum(p.numel() for layer in layers_of(model) for p in layer.parameters()) \
            if criterion in FISHER_CRITERIA else 0
    layer_grads = 2 * max(sum(p.numel() for p in layer.parameters()) for layer in layers_of(model)) * 4
    return int(kept + fisher + layer_grads)


def copy_peak(model, measure_tokens: int = 128) -> int:
    """A full copy of the model (pruning and the unstructured contrast work on one) and the
    forwards that measure it."""
    return weight_bytes(model) + forward_bytes(model, measure_tokens)


def generation_peak(model, sequences: int, length: int) -> int:
    """Sampling `sequences` at once to `length` tokens (self text, continued calibration): every
    layer's key / value cache at full length, x1.6 (each step re-allocates every layer's cache one
    position longer; inside the allocator's reuse phase the freed shorter blocks stay in the heap as
    holes: bench/step_peaks.py measured 739 MB against 530 MB for the cache counted once on the
    default model), and a step's float32 logits with the sampler's copies (softmax, top-k / top-p
    sorting: 4 per logit)."""
    from .arch import arch_of

    _, _, _, vocab = _shape(model)
    arch = arch_of(model)
    kv_widths = sum(n_kv * head_dim for _, n_kv, head_dim in map(arch.attention_shape, layers_of(model)))
    elem = next(model.parameters()).element_size()
    cache = 1.6 * 2 * sequences * length * kv_widths * elem
    return int(cache + sequences * vocab * 4 * 4 + forward_bytes(model, sequences, logits_tokens=0))


def self_calibration_peak(model, samples: int, seq_len: int) -> int:
    """Writing `self` calibration text (pruner.data.self_generated_text): one batch of documents
    sampled from the start token (`generation_peak`)."""
    from .data import SELF_BATCH, self_document_length

    return generation_peak(model, min(SELF_BATCH, 2 * samples), 1 + self_document_length(seq_len, model))


def calibration_peak(model, source: str, samples: int, seq_len: int, continuation: int = 0) -> int:
    """What making the calibration tokens holds at its peak: the generation's for `self`, for the
    model's continuations of other text (`continuation` tokens each, pruner.data.continued_ids)
    theirs, else nothing to speak of."""
    from .data import SELF_BATCH, SELF_SOURCE, continued_length

    if source == SELF_SOURCE:
        return self_calibration_peak(model, samples, seq_len)
    new = continued_length(source, seq_len, continuation, model)
    return generation_peak(model, min(SELF_BATCH, samples), seq_len + new) if new else 0


def prune_peak(model, criterion: str, samples: int, seq_len: int, scores_cached: bool,
               low_memory: bool = True, refit: bool = False) -> int:
    """A pruned copy (at most the original's size while it is sliced) and, unless the scores are
    cached, the scoring pass; then the before/after measurements (8 x 128-token windows). With
    the least-squares refit (pruner/refit.py), one layer at a time with every column kept at most
    (k = the larger of d_ff and the hidden size, out = the hidden size): its float32 sums (k^2 +
    out k) beside the float64 system ((k + 1)^2) and right-hand side ((k + 1) out) while the system
    is built, then the system, right-hand side and solution; and the calibration batches' hidden
    states, in and out."""
    scoring = 0 if scores_cached else score_peak(model, criterion, samples, seq_len, low_memory)
    extra = 0
    if refit:
        _, hidden, inter, _ = _shape(model)
        k, out = max(inter, hidden), hidden
        build = 4 * (k * k + out * k) + 8 * ((k + 1) ** 2 + (k + 1) * out)
        solve = 8 * ((k + 1) ** 2 + 2 * (k + 1) * out)
        extra = max(build, solve) + 2 * samples * seq_len * hidden * 4
    return copy_peak(model, 8 * 128) + scoring + extra


def adapter_bytes(model, rank: int) -> int:
    """LoRA adapters of rank `rank` on every projection of every layer (an r x in and an out x r
    matrix each) with their gradients and AdamW's two moments: 16 bytes per float32 parameter."""
    import torch
    from .arch import arch_of

    targets = set(arch_of(model).lora_targets())
    params = sum(rank * (m.in_features + m.out_features) for layer in layers_of(model)
                 for name, m in layer.named_modules()
                 if isinstance(m, torch.nn.Linear) and name.rsplit(".", 1)[-1] in targets)
    return 16 * params


def full_finetune_bytes(model) -> int:
    """Full fine-tuning of every weight outside the embeddings (and a head tied to them): for a
    float32 weight its gradient, AdamW's two moments and the half-size copy bfloat16 autocast
    keeps through the forward (`mixed_precision`), 14 bytes; for a 16-bit one its gradient, its
    float32 master copy with that copy's gradient and moments (`recover.FloatMasters`), 18 bytes."""
    return int(sum(p.numel() * (14 if p.element_size() == 4 else p.element_size() + 16)
                   for p in full_finetune_weights(model)))


def recover_peak(pruned, batch_size: int, seq_len: int, distill: bool, rank: int = 8,
                 full_finetune: bool = False) -> int:
    """LoRA on a copy of the pruned model: the copy; the activations kept for backward (the
    layers' own, plus LoRA's dropped-out copy of every adapted input and its mask); float32 logits
    of `recover.LOSS_CHUNK` positions at a time with the loss's copies (the teacher's too when
    distilling); the adapters with gradients and optimizer state (`adapter_bytes`: 37 / 149 / 298 MiB
    at rank 8 / 32 / 64 on the default model before pruning; the former flat 5% of the weights was
    26 MiB), or with `full_finetune` every trained weight's gradient and moments instead
    (`full_finetune_bytes`: 1.0 GiB on the default model pruned by 20%) and no adapted inputs.
    With float32 weights, the output head's bfloat16 copies too (student and teacher: kept for
    the run where the steps run in bfloat16, `models.head_projection`; 2 x 57 MB on the default
    model). Activations x1.4: the heap's fragmentation under training (a standalone quick-preset
    run on the default model measured 0.94 of this at rank 8, with a 4 MiB allocator threshold;
    bench/step_peaks.py measures it beside the estimate). Counted at the weights' precision even
    where the steps run in bfloat16 (`LoraSettings.mixed_precision`), which keeps half of it."""
    from .recover import LOSS_CHUNK

    layers, hidden, inter, vocab = _shape(pruned)
    elem = next(pruned.parameters()).element_size()
    tokens = batch_size * seq_len
    body = layers * tokens * (14 * hidden + 5 * inter) * elem
    lora = 0 if full_finetune else layers * tokens * (6 * hidden + inter) * (elem + 1)
    logits = (8 if distill else 3) * LOSS_CHUNK * vocab * 4
    head_casts = (2 if distill else 1) * vocab * hidden * 2 if elem == 4 else 0
    trained = full_finetune_bytes(pruned) if full_finetune else adapter_bytes(pruned, rank)
    return int(weight_bytes(pruned) + trained + 1.4 * (body + lora) + logits + head_casts)


def merge_peak(pruned) -> int:
    """The merged copy (LoRA folded into the weights) and the quick perplexity of it."""
    return weight_bytes(pruned) + forward_bytes(pruned, 8 * 128)


def evaluate_peak(model, batch_size: int = 16, seq_len: int = 512) -> int:
    """No-grad forwards: perplexity batches of 8 x 128 tokens with full logits, or zero-shot
    batches of `batch_size` requests up to `seq_len` tokens, projected to the vocabulary only where
    a continuation token is predicted (a few dozen per request)."""
    return max(forward_bytes(model, 8 * 128),
               forward_bytes(model, batch_size * seq_len, logits_tokens=batch_size * 64))


def export_peak(model, gguf_precision: str | None = None) -> int:
    """Writing safetensors streams each tensor's bytes (measured: no copy; a margin for buffers);
    GGUF converts every tensor to its precision and holds them until the file is written (a
    float16 copy is half of a float32 model), with per-tensor temporaries."""
    if gguf_precision is None:
        return 64 * 2**20 + weight_bytes(model) // 20
    elem = next(model.parameters()).element_size()
    return int(1.25 * weight_bytes(model) * (2 if gguf_precision == "f16" else 4) / elem)


def generate_peak(models: list, max_new_tokens: int, prompt_tokens: int = 64) -> int:
    """Greedy or sampled decoding: a KV cache and one step's logits per model."""
    total = 0
    for model in models:
        layers, hidden, _, vocab = _shape(model)
        elem = next(model.parameters()).element_size()
        total += 2 * layers * (prompt_tokens + max_new_tokens) * hidden * elem + 2 * vocab * 4
    return total


def export_disk_bytes(model, shard_bytes: int = 200 * 10**6, extra: int = 64 * 2**20) -> int:
    """Disk an export needs at its peak: the zip of the weights, one shard being moved into it,
    and tokenizer, config, card and adapter files (`extra`)."""
    return weight_bytes(model) + shard_bytes + extra
