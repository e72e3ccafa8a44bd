"""GGUF export: metadata and tensors read back with `gguf`, the rotary permutation checked against
both rotary conventions, and (where llama-cpp-python is installed) llama.cpp's logits compared with
transformers' on the same tokens."""

import json
import subprocess
import sys

import gguf
import numpy as np
import pytest
import torch

from pruner.gguf_export import GGUFExportError, to_rotate_pairs, write_gguf
from pruner.prune import Plan, apply_plan

from conftest import tiny_model
from families import tiny_family_model

try:
    import llama_cpp
except ImportError:        # built from source by `pip install -r requirements-gguf.txt`
    llama_cpp = None
needs_llama_cpp = pytest.mark.skipif(llama_cpp is None, reason="llama-cpp-python is not installed "
                                     "(pip install -r requirements-gguf.txt builds it, ~10 min here)")


def per_layer_pruned(vocab: int):
    """Layer 0 keeps 1 KV group and 10 channels, layer 1 both groups and 30 channels."""
    model = tiny_model(vocab=vocab, n_heads=4, n_kv=2, layers=2)
    return apply_plan(model, Plan(attn_keep={0: [1]}, mlp_keep={0: list(range(10)), 1: list(range(30))}))


def fields(path) -> dict:
    reader = gguf.GGUFReader(path)
    return reader, {k: f.contents() for k, f in reader.fields.items() if not k.startswith("tokenizer.ggml.t")
                    and not k.startswith("tokenizer.ggml.merges")}


def test_per_layer_widths_are_written_as_arrays_of_the_deci_architecture(tmp_path, tokenizer):
    pruned = per_layer_pruned(len(tokenizer))
    summary = write_gguf(pruned, tokenizer, tmp_path / "m.gguf", "f32", base_model="default")
    reader, meta = fields(summary.path)
    assert summary.architecture == meta["general.architecture"] == "deci"
    assert meta["deci.feed_forward_length"] == [10, 30]
    assert meta["deci.attention.head_count"] == [2, 4] and meta["deci.attention.head_count_kv"] == [1, 2]
    assert meta["deci.attention.key_length"] == 8 and meta["deci.embedding_length"] == 32
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "smollm"
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    assert len(tokens) == len(tokenizer) and tokens[1] == "<|im_start|>"
    assert reader.fields["tokenizer.ggml.token_type"].contents()[:2] == [3, 3]     # control tokens
    assert "im_start" in meta["tokenizer.chat_template"]
    tensors = {t.name: t for t in reader.tensors}
    assert summary.tensors == len(tensors)
    layer = pruned.model.layers[0]
    # GGUF stores shapes innermost first: [in, out]; the data is the row-major [out, in] matrix
    assert list(tensors["blk.0.ffn_gate.weight"].shape) == [32, 10]
    np.testing.assert_array_equal(tensors["blk.0.ffn_down.weight"].data, layer.mlp.down_proj.weight.detach().numpy())
    q = torch.from_numpy(np.array(tensors["blk.0.attn_q.weight"].data))
    np.testing.assert_array_equal(q.numpy(), to_rotate_pairs(layer.self_attn.q_proj.weight.detach(), 2).numpy())
    assert "output.weight" in tensors and "rope_freqs.weight" not in tensors


def test_uniform_widths_use_the_plain_llama_architecture_in_float16(tmp_path, tokenizer):
    model = tiny_model(vocab=len(tokenizer), n_heads=4, n_kv=2, layers=2, tie=True)
    pruned = apply_plan(model, Plan(mlp_keep={0: list(range(24)), 1: list(range(24, 48))}))
    summary = write_gguf(pruned, tokenizer, tmp_path / "m.gguf", "f16")
    reader, meta = fields(summary.path)
    assert meta["general.architecture"] == "llama" and meta["llama.feed_forward_length"] == 24
    tensors = {t.name: t for t in reader.tensors}
    assert "output.weight" not in tensors                  # tied: llama.cpp reuses token_embd
    assert tensors["blk.1.ffn_up.weight"].tensor_type == gguf.GGMLQuantizationType.F16
    assert tensors["blk.1.ffn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32


def rope_half(x, pos, theta=10000.0):
    """transformers' rotary embedding: dimension j pairs with j + d/2. x: [heads, d]."""
    d = x.shape[-1]
    freq = pos / theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d)     # [d/2]
    cos, sin = torch.cat([freq.cos()] * 2), torch.cat([freq.sin()] * 2)
    rotated = torch.cat([-x[..., d // 2:], x[..., : d // 2]], dim=-1)
    return x * cos + rotated * sin


def rope_pairs(x, pos, theta=10000.0):
    """llama.cpp's "normal" rotary embedding: dimensions 2j and 2j + 1 rotate together."""
    d = x.shape[-1]
    freq = pos / theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    even, odd = x[..., 0::2], x[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = even * freq.cos() - odd * freq.sin()
    out[..., 1::2] = even * freq.sin() + odd * freq.cos()
    return out


def test_permuted_rows_give_the_same_attention_scores_under_llama_cpp_rope():
    torch.manual_seed(0)
    heads, d, hidden = 3, 8, 16
    wq, wk = torch.randn(heads * d, hidden, dtype=torch.float64), torch.randn(heads * d, hidden, dtype=torch.float64)
    x_q, x_k = torch.randn(hidden, dtype=torch.float64), torch.randn(hidden, dtype=torch.float64)
    hf = (rope_half((wq @ x_q).view(heads, d), 7) * rope_half((wk @ x_k).view(heads, d), 3)).sum(-1)
    cpp = (rope_pairs((to_rotate_pairs(wq, heads) @ x_q).view(heads, d), 7)
           * rope_pairs((to_rotate_pairs(wk, heads) @ x_k).view(heads, d), 3)).sum(-1)
    torch.testing.assert_close(cpp, hf)


def test_families_llama_cpp_cannot_run_are_refused_with_the_alternative(tmp_path, tokenizer):
    with pytest.raises(GGUFExportError, match="convert_hf_to_gguf"):
        write_gguf(tiny_family_model("gemma"), tokenizer, tmp_path / "m.gguf")
    with pytest.raises(GGUFExportError, match="precision"):
        write_gguf(tiny_model(), tokenizer, tmp_path / "m.gguf", "q4")


def test_cli_export_writes_gguf_from_an_export_folder(tmp_path, tiny_folder):
    out = tmp_path / "tiny.gguf"
    run = subprocess.run([sys.executable, "-m", "pruner", "export", "--model", tiny_folder, "--gguf", str(out),
                          "--gguf-precision", "f32", "--device", "cpu", "--json"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    figures = json.loads(run.stdout.strip().splitlines()[-1])
    assert figures["architecture"] == "llama" and figures["bytes"] == out.stat().st_size


def llama_cpp_logits(path, ids: list[int]) -> np.ndarray:
    """Next-token logits at every position, from llama.cpp on the CPU."""
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=256, logits_all=True, verbose=False, n_threads=2,
                          n_gpu_layers=0)
    llm.eval(ids)
    scores = np.array(llm.scores[: len(ids)])
    llm.close()
    return scores


def hf_logits(model, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0].double().numpy()


@needs_llama_cpp
def test_llama_cpp_matches_transformers_on_a_per_layer_pruned_model(tmp_path, tokenizer):
    pruned = per_layer_pruned(len(tokenizer))
    path = write_gguf(pruned, tokenizer, tmp_path / "m.gguf", "f32").path
    ids = tokenizer("The Leaning Tower of Pisa is known for its")["input_ids"]
    ours, theirs = hf_logits(pruned, ids), llama_cpp_logits(path, ids)
    np.testing.assert_allclose(theirs, ours, atol=2e-3 * np.abs(ours).max())


@needs_llama_cpp
def test_llama_cpp_matches_transformers_after_hidden_channels_go(tmp_path, tokenizer):
    """Minitron's widths: hidden channels cut (every norm's epsilon rescaled alike, so llama.cpp's
    one epsilon holds), then MLP channels per layer."""
    model = tiny_model(vocab=len(tokenizer), n_heads=4, n_kv=2, layers=2)
    narrow = apply_plan(model, Plan(hidden_keep=[c for c in range(32) if c % 4 != 1]))          # 24 of 32
    pruned = apply_plan(narrow, Plan(mlp_keep={0: list(range(20)), 1: list(range(40))}))
    path = write_gguf(pruned, tokenizer, tmp_path / "m.gguf", "f32").path
    ids = tokenizer("The Leaning Tower of Pisa is known for its")["input_ids"]
    ours, theirs = hf_logits(pruned, ids), llama_cpp_logits(path, ids)
    np.testing.assert_allclose(theirs, ours, atol=2e-3 * np.abs(ours).max())


@needs_llama_cpp
def test_llama_cpp_matches_transformers_on_qwen2_biases_and_notes_mistrals_window(tmp_path):
    """Qwen2's q/k/v biases are permuted with their rows; Mistral's sliding window (8 tokens in this
    tiny config) is not carried, which the summary says, and within the window the logits agree."""
    from families import tiny_tokenizer

    plan = Plan(attn_keep={0: [1]}, mlp_keep={0: list(range(10)), 2: list(range(30))})
    ids = list(range(5, 25))
    for family, n in (("qwen2", 20), ("mistral", 8)):
        pruned = apply_plan(tiny_family_model(family, vocab=96), plan)
        summary = write_gguf(pruned, tiny_tokenizer(96), tmp_path / f"{family}.gguf", "f32")
        assert summary.architecture == "deci"
        assert any("sliding window of 8" in note for note in summary.notes) == (family == "mistral")
        ours, theirs = hf_logits(pruned, ids[:n]), llama_cpp_logits(summary.path, ids[:n])
        np.testing.assert_allclose(theirs, ours, atol=1e-3)


@needs_llama_cpp
@pytest.mark.slow
def test_llama_cpp_runs_the_default_recipes_gguf(tmp_path, default_model):
    """The default recipe's pruned default model (per-layer widths): same next tokens, close logits."""
    from pruner.data import calibration_ids
    from pruner.prune import prune_model
    from pruner.recipes import recipe

    model, tok = default_model
    score_config, config = recipe("default")
    config, _ = config.normalized(model)
    pruned = prune_model(model, calibration_ids(tok, "builtin", 10, 64, 0), score_config, config).model
    summary = write_gguf(pruned, tok, tmp_path / "pruned.gguf", "f32", base_model="default")
    assert summary.architecture == "deci"
    ids = tok("The Leaning Tower of Pisa is known for")["input_ids"]
    ours, theirs = hf_logits(pruned, ids), llama_cpp_logits(summary.path, ids)
    assert (theirs.argmax(-1) == ours.argmax(-1)).all()
    np.testing.assert_allclose(theirs, ours, atol=1e-2 * np.abs(ours).max())
    llm = llama_cpp.Llama(model_path=str(summary.path), n_ctx=256, verbose=False, n_threads=2)
    assert llm.tokenize(b"The Leaning Tower of Pisa", add_bos=False) == tok("The Leaning Tower of Pisa")["input_ids"]
    llm.close()
