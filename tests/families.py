"""Tiny random models of every supported decoder family, built from transformers configs."""

from __future__ import annotations

import torch
from transformers import AutoConfig, AutoModelForCausalLM

COMMON = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
              num_key_value_heads=2, head_dim=8, max_position_embeddings=128, rms_norm_eps=1e-5,
              pad_token_id=0, bos_token_id=1, eos_token_id=2)

# what each family adds: sliding windows shorter than the test sequences, soft-capping, biases,
# multipliers, per-layer rope switches, tied embeddings -- the settings an export must keep
EXTRA = {
    "llama": dict(),
    "mistral": dict(sliding_window=8),
    "qwen2": dict(),                                     # q/k/v biases always
    "qwen3": dict(),                                     # per-head q_norm / k_norm
    "gemma": dict(tie_word_embeddings=True),             # (1 + w) norms, embeddings x sqrt(d)
    "gemma2": dict(sliding_window=8, final_logit_softcapping=30.0, attn_logit_softcapping=50.0,
                   query_pre_attn_scalar=8, tie_word_embeddings=True),
    "gemma3_text": dict(sliding_window=8, query_pre_attn_scalar=8, tie_word_embeddings=True,
                        layer_types=["sliding_attention", "full_attention", "sliding_attention"]),
    "phi3": dict(),                                      # fused qkv_proj and gate_up_proj
    "granite": dict(embedding_multiplier=2.0, residual_multiplier=0.5, attention_multiplier=0.3,
                    logits_scaling=2.0),
    "smollm3": dict(no_rope_layers=[1, 0, 1], tie_word_embeddings=True),
    "olmo2": dict(),                                     # full-width q_norm / k_norm, post-norms
}
FAMILIES = tuple(EXTRA)


def tiny_config(family: str, vocab: int = 96, **kw):
    settings = dict(COMMON, vocab_size=vocab, **EXTRA[family])
    settings.update(kw)
    if family == "smollm3":
        settings["no_rope_layers"] = [1, 0, 1][: settings["num_hidden_layers"]] + \
            [1] * max(0, settings["num_hidden_layers"] - 3)
    if "layer_types" in settings:
        pattern = ["sliding_attention", "full_attention"]
        settings["layer_types"] = [pattern[i % 2] for i in range(settings["num_hidden_layers"])]
    return AutoConfig.for_model(family, **settings)


def tiny_family_model(family: str, seed: int = 0, vocab: int = 96, **kw):
    """A randomly initialised tiny model; norms and biases random so every rescale is exercised."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family, vocab, **kw), dtype=torch.float32)
    model.eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(0.5 + torch.rand(p.shape, generator=gen))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    return model


def tiny_tokenizer(vocab: int = 128):
    """A BPE tokenizer of `vocab` tokens trained on the built-in calibration text (offline, fast),
    so a tiny model's embedding does not dwarf its layers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from pruner.data import ASSETS

    text = [line for path in sorted(ASSETS.glob("*.txt")) for line in path.read_text().splitlines()]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(text, trainers.BpeTrainer(vocab_size=vocab, limit_alphabet=80,
                                                      special_tokens=["<pad>", "<s>", "</s>", "<unk>"]))
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>",
                                   eos_token="</s>", unk_token="<unk>")
