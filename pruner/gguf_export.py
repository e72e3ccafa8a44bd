"""Write a (pruned) model as a GGUF file that llama.cpp, and so ollama and LM Studio, run.

`write_gguf(model, tokenizer, path, precision)`:

- uniform widths -> llama.cpp's `llama` architecture, read by every llama.cpp build;
- per-layer widths -> llama.cpp's `deci` architecture (DeciLM / Nemotron-NAS): the same
  Llama block, with `feed_forward_length`, `attention.head_count` and `attention.head_count_kv`
  stored as per-layer arrays (llama.cpp since early 2025; older builds refuse the file).

Both use llama.cpp's "normal" rotary embedding on consecutive pairs, so q and k rows (and
biases) are permuted from transformers' rotate-half layout, as llama.cpp's own converter does. Families: llama, mistral, qwen2 (biases kept); others raise `GGUFExportError`
naming the reason. Tensors are float16 (default) or float32; norms and biases stay float32.
Tokenizer metadata (tokens, types, merges, special ids, chat template) comes from the
tokenizer's own files.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from .arch import arch_of, norm_eps
from .prune import layer_widths

__all__ = ["GGUFExportError", "GGUFSummary", "check_exportable", "write_gguf", "PRECISIONS"]

PRECISIONS = ("f16", "f32")
FAMILIES = ("llama", "mistral", "qwen2")
# llama.cpp names a GPT-2-style tokenizer's pre-tokenizer; matched on the base model's name
PRE_TOKENIZERS = (("smollm", "smollm"), ("qwen", "qwen2"), ("llama-3", "llama-bpe"),
                  ("llama3", "llama-bpe"), ("mistral-nemo", "tekken"))
TOKEN_NORMAL, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED = 1, 3, 4, 5


class GGUFExportError(ValueError):
    """The model cannot be written as GGUF; the message says why and what to use instead."""


@dataclass
class GGUFSummary:
    path: Path
    architecture: str          # "llama" (uniform widths) or "deci" (per-layer widths)
    precision: str
    tensors: int
    bytes: int
    pre_tokenizer: str
    notes: list[str]

    def sentence(self) -> str:
        runs = ("any llama.cpp build" if self.architecture == "llama"
                else "llama.cpp builds from 2025 on (architecture 'deci': per-layer widths)")
        return (f"{self.path.name}: {self.bytes / 2**20:,.1f} MiB, {self.precision}, "
                f"llama.cpp architecture '{self.architecture}', runs in {runs}")


def to_rotate_pairs(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Rows of q/k (or their bias) from rotate-half order to consecutive-pair order per head.

    weight: [n_heads * head_dim, ...] -> same shape; within each head, row j < head_dim/2 and
    row j + head_dim/2 become rows 2j and 2j + 1.
    """
    rest = weight.shape[1:]
    head_dim = weight.shape[0] // n_heads
    return (weight.reshape(n_heads, 2, head_dim // 2, *rest)   # [heads, half, head_dim/2, ...]
            .swapaxes(1, 2)                                    # [heads, head_dim/2, half, ...]
            .reshape(weight.shape))


def check_exportable(model) -> None:
    arch = arch_of(model)
    if arch.name not in FAMILIES:
        raise GGUFExportError(
            f"GGUF export covers the {', '.join(FAMILIES)} families; this is {arch.name}. Export the "
            "safetensors folder and convert it with llama.cpp's convert_hf_to_gguf.py (uniform widths).")
    rope = _rope(model.config)
    if rope.get("rope_type", "default") not in ("default", "llama3", "linear"):
        raise GGUFExportError(f"rope scaling {rope.get('rope_type')!r} is not written by this exporter; "
                              "use llama.cpp's convert_hf_to_gguf.py on the safetensors export.")
    eps = {norm_eps(m) for name, m in model.named_modules() if "norm" in name and norm_eps(m) is not None}
    if len(eps) > 1:
        raise GGUFExportError("the norms have different epsilons (hidden channels were pruned with "
                              "rescaled norms); llama.cpp has one epsilon per model.")


def _rope(config) -> dict:
    rope = dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
    rope.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
    return rope


def _rope_factors(model, head_dim: int) -> torch.Tensor | None:
    """llama.cpp's rope_freqs tensor: the per-frequency divisor a scaled rope (Llama 3.1) applies."""
    theta = float(_rope(model.config)["rope_theta"])
    base = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    used = getattr(getattr(model.model, "rotary_emb", None), "inv_freq", None)
    if used is None:
        return None
    factors = (base / used.double().cpu()).float()
    return None if torch.allclose(factors, torch.ones_like(factors)) else factors


def _pre_tokenizer(base_model: str) -> str | None:
    name = base_model.lower()
    return next((pre for key, pre in PRE_TOKENIZERS if key in name), None)


def _add_tokenizer(writer, tokenizer, n_vocab: int, base_model: str, notes: list[str]) -> str:
    """Tokens, token types, merges and special ids from the tokenizer's saved files."""
    import gguf

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        spec = json.loads((Path(tmp) / "tokenizer.json").read_text()) \
            if (Path(tmp) / "tokenizer.json").exists() else {}
        model_spec = spec.get("model", {})
        if model_spec.get("type") == "BPE" and model_spec.get("byte_fallback"):
            vocab = gguf.vocab.LlamaHfVocab(Path(tmp))         # sentencepiece-style (Llama 2, Mistral)
            tokens, scores, types = zip(*vocab.all_tokens())
            tokens, scores, types = list(tokens), list(scores), [int(t) for t in types]
            writer.add_tokenizer_model("llama")
            pre = "default"
        elif model_spec.get("type") == "BPE":
            tokens, types = _bpe_tokens(tokenizer, n_vocab)
            scores = None
            writer.add_tokenizer_model("gpt2")
            pre = _pre_tokenizer(base_model)
            if pre is None:
                pre = "default"
                notes.append(f"pre-tokenizer of {base_model!r} unknown here: written as 'default' "
                             "(llama.cpp may split some text differently from transformers)")
            writer.add_tokenizer_pre(pre)
        else:
            raise GGUFExportError("GGUF export needs a BPE tokenizer.json (GPT-2 style or sentencepiece "
                                  "BPE); this tokenizer has none.")
        tokens += [f"[PAD{i}]".encode() for i in range(len(tokens), n_vocab)]
        types += [TOKEN_UNUSED] * (n_vocab - len(types))
        writer.add_token_list(tokens[:n_vocab])
        writer.add_token_types(types[:n_vocab])
        if scores is not None:
            writer.add_token_scores(list(scores) + [-1000.0] * (n_vocab - len(scores)))
        gguf.SpecialVocab(tmp, load_merges=scores is None,
                          n_vocab=n_vocab).add_to_gguf(writer, quiet=True)
    return pre


def _bpe_tokens(tokenizer, n_vocab: int) -> tuple[list[bytes], list[int]]:
    """GPT-2-style tokens by id (byte-level strings, as llama.cpp expects) and their types."""
    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    tokens, types = [], []
    for i in range(min(n_vocab, max(by_id) + 1)):
        if i not in by_id:
            tokens.append(f"[PAD{i}]".encode())
            types.append(TOKEN_UNUSED)
            continue
        tokens.append(by_id[i].encode("utf-8"))
        token = added.get(i)
        types.append(TOKEN_NORMAL if token is None else TOKEN_CONTROL if token.special else TOKEN_USER_DEFINED)
    return tokens, types


def write_gguf(model, tokenizer, path, precision: str = "f16", base_model: str | None = None) -> GGUFSummary:
    """Write `model` (any widths) and its tokenizer to one GGUF file at `path`."""
    import gguf

    if precision not in PRECISIONS:
        raise GGUFExportError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    check_exportable(model)
    arch = arch_of(model)
    config = model.config
    widths = layer_widths(model)
    uniform = all(widths[c].nunique() == 1 for c in ("heads", "kv_heads", "intermediate_size"))
    name = "llama" if uniform else "deci"
    head_dim = int(widths.head_dim.iloc[0])
    if base_model is None:
        record = (getattr(config, "pruning", None) or {}).get("recipe") or {}
        base_model = str(record.get("base_model") or getattr(config, "_name_or_path", "") or "")
    if base_model == "default":
        from .models import DEFAULT_HUB_ID
        base_model = DEFAULT_HUB_ID
    notes: list[str] = []
    window = getattr(config, "sliding_window", None)
    if window and getattr(config, "use_sliding_window", True) and window < getattr(config, "max_position_embeddings", 0):
        notes.append(f"the model attends to a sliding window of {window} tokens, which this file does not "
                     f"carry: llama.cpp attends to the whole context, so texts longer than {window} tokens "
                     "score differently")
    out = Path(path).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(out), name)
    n_layers = len(widths)
    hidden = int(model.model.embed_tokens.weight.shape[1])
    n_vocab = int(model.model.embed_tokens.weight.shape[0])

    def per_layer(column):
        values = [int(v) for v in widths[column]]
        return values[0] if uniform else values

    writer.add_name(f"{base_model.split('/')[-1] or 'model'} (pruned)")
    writer.add_block_count(n_layers)
    writer.add_context_length(int(getattr(config, "max_position_embeddings", 2048)))
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(per_layer("intermediate_size"))
    writer.add_head_count(per_layer("heads"))
    writer.add_head_count_kv(per_layer("kv_heads"))
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(_rope(config)["rope_theta"]))
    writer.add_layer_norm_rms_eps(float(norm_eps(model.model.norm) or config.rms_norm_eps))
    writer.add_vocab_size(n_vocab)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if precision == "f16" else gguf.LlamaFileType.ALL_F32)
    pre = _add_tokenizer(writer, tokenizer, n_vocab, base_model, notes)

    written = []

    def add(name: str, tensor: torch.Tensor) -> None:
        written.append(name)
        array = tensor.detach().to("cpu", torch.float32)
        if precision == "f16" and array.ndim >= 2:
            array = array.half()
        writer.add_tensor(name, array.numpy())

    add("token_embd.weight", model.model.embed_tokens.weight)
    add("output_norm.weight", model.model.norm.weight)
    if not getattr(config, "tie_word_embeddings", False):
        add("output.weight", model.lm_head.weight)
    factors = _rope_factors(model, head_dim)
    if factors is not None:
        add("rope_freqs.weight", factors)
    names = {arch.q: "attn_q", arch.k: "attn_k", arch.v: "attn_v", arch.o: "attn_output",
             arch.gate: "ffn_gate", arch.up: "ffn_up", arch.down: "ffn_down"}
    for i, layer in enumerate(model.model.layers):
        n_q, n_kv = int(widths.heads[i]), int(widths.kv_heads[i])
        add(f"blk.{i}.attn_norm.weight", layer.get_submodule(arch.pre_attn_norms[0]).weight)
        add(f"blk.{i}.ffn_norm.weight", layer.get_submodule(arch.pre_mlp_norms[0]).weight)
        for path, short in names.items():
            linear = layer.get_submodule(path)
            heads = n_q if path == arch.q else n_kv if path == arch.k else None
            for kind in ("weight", "bias"):
                tensor = getattr(linear, kind, None)
                if tensor is None:
                    continue
                if heads is not None:
                    tensor = to_rotate_pairs(tensor.detach(), heads)
                add(f"blk.{i}.{short}.{kind}", tensor)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return GGUFSummary(out, name, precision, len(written), out.stat().st_size, pre, notes)


def describe(summary: GGUFSummary) -> str:
    extra = "; ".join(summary.notes)
    return summary.sentence() + (f" ({extra})" if extra else "")

