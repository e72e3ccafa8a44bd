"""Low-memory scoring's memory, counted deterministically: the bytes the forward pass saves for
backward (saved-tensor hooks) and the float32 Fisher buffers held at once; same scores as fast mode."""

import pytest
import torch

from conftest import tiny_model
from pruner import ScoreConfig, score
from pruner import importance
from pruner.importance import LOSS_CHUNK, accumulator_chunks, causal_lm_loss, layer_checkpointing
from pruner.stats import weight_bytes

LAYERS, HIDDEN = 8, 32


@pytest.fixture
def deep():
    return tiny_model(layers=LAYERS, hidden=HIDDEN, vocab=96)


def saved_bytes(model, ids, low_memory: bool) -> int:
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t

    for p in model.parameters():
        p.requires_grad_(True)
    try:
        with layer_checkpointing(model, low_memory), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            causal_lm_loss(model, ids, LOSS_CHUNK)        # scoring's loss, chunked in either mode
    finally:
        for p in model.parameters():
            p.requires_grad_(False)
    return total[0]


def test_low_memory_forward_saves_only_layer_inputs(deep):
    ids = torch.randint(3, 96, (4, 64))
    hidden_state = ids.numel() * HIDDEN * 4                  # one (B, L, H) float32 tensor
    low, fast = saved_bytes(deep, ids, True), saved_bytes(deep, ids, False)
    assert low <= (LAYERS + 5) * hidden_state               # checkpointed inputs + rotary + head chunks
    assert fast > 10 * low


@pytest.mark.parametrize("low_memory", [False, True])
def test_scoring_never_keeps_the_whole_vocabulary_projection(low_memory):
    """Either mode projects LOSS_CHUNK tokens to the vocabulary at a time: no tensor saved for
    backward holds more rows of logits (the full float32 logits were 805 MB for the default
    model's 32 x 128 calibration tokens, and slower to write than to recompute in chunks)."""
    vocab = 211                                        # no other dimension of the model has this size
    model = tiny_model(layers=2, hidden=HIDDEN, vocab=vocab)
    ids = torch.randint(3, vocab, (4, 64), generator=torch.Generator().manual_seed(0))   # 252 predicted tokens
    saved, rows = [0], []

    def pack(t):
        saved[0] += 1
        if t.dim() and t.shape[-1] == vocab:
            rows.append(t.numel() // vocab)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        score(model, ids, ScoreConfig("taylor-element1", low_memory=low_memory))
    assert saved[0] > 0 and max(rows, default=0) <= LOSS_CHUNK < ids.shape[0] * (ids.shape[1] - 1)


def test_fisher_buffers_held_at_once_stay_within_their_share(deep):
    ids = torch.randint(3, 96, (6, 16), generator=torch.Generator().manual_seed(0))
    fast = score(deep, ids, ScoreConfig("taylor-element2", low_memory=False))
    all_at_once = importance.last_accumulator_peak["bytes"]
    low = score(deep, ids, ScoreConfig("taylor-element2", low_memory=True))
    held = importance.last_accumulator_peak["bytes"]
    assert held <= importance.ACCUMULATOR_SHARE * weight_bytes(deep) < all_at_once
    assert torch.allclose(torch.tensor(low.score.values), torch.tensor(fast.score.values), rtol=1e-4, atol=1e-9)


def test_chunks_are_whole_layers_top_first():
    params = {f"model.layers.{i}.mlp.up_proj.weight": torch.empty(10, 10) for i in range(5)}
    params["model.embed_tokens.weight"] = torch.empty(10, 10)
    chunks = accumulator_chunks(params, set(params), budget_bytes=2 * 400)
    layers = [sorted(importance._layer_of(n) for n in c) for c in chunks]
    assert layers == [[3, 4], [1, 2], [-1, 0]]
    assert accumulator_chunks(params, set(params), None) == [set(params)]


def test_auto_mode_follows_the_real_limit(deep, monkeypatch):
    from pruner.importance import resolve_low_memory

    ids = torch.randint(3, 96, (4, 64))
    monkeypatch.setenv("PRUNING_STUDIO_MEMORY_GB", "0.001")       # below this process's RSS: nothing free
    assert resolve_low_memory(deep, ids, None, None, "taylor-element1")
    monkeypatch.setenv("PRUNING_STUDIO_MEMORY_GB", "1000")
    assert not resolve_low_memory(deep, ids, None, None, "taylor-element2")
    assert not resolve_low_memory(deep, ids, None, False, "taylor-element2")     # explicit wins
