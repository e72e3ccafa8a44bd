# Pruning Studio: per-layer widths for a pruned decoder, for `from_pretrained(..., trust_remote_code=True)`.
#
# An export whose layers kept different numbers of heads or MLP channels carries this file as
# modeling_pruned.py (the first lines, naming the family's own transformers class, are written by
# the export). It subclasses that class and, after building it from config.json, resizes each
# layer's projections to `config.pruning["layer_widths"]`, using the projection paths recorded in
# `config.pruning["structure"]`. It imports nothing but torch and transformers.
#
import copy

from torch import nn
from transformers import LlamaForCausalLM as _Base  # BASE: the export names the family's own class here


def _set(root, path, module):
    parent, _, child = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


def _linear(old, n_in, n_out):
    return nn.Linear(n_in, n_out, bias=old.bias is not None, device=old.weight.device, dtype=old.weight.dtype)


def resize_layers(model, config):
    """Resize every decoder layer to the widths recorded in config.pruning."""
    record = getattr(config, "pruning", None) or {}
    widths, s = record.get("layer_widths") or [], record.get("structure") or {}
    hidden = config.hidden_size
    for layer, w in zip(model.model.layers, widths):
        attn = layer.get_submodule(s["o"].rsplit(".", 1)[0])
        hd, heads, kv, inter = attn.head_dim, w["heads"], w["kv_heads"], w["intermediate_size"]
        if s.get("qkv"):
            _set(layer, s["qkv"], _linear(layer.get_submodule(s["qkv"]), hidden, (heads + 2 * kv) * hd))
        else:
            for path, n in ((s["q"], heads), (s["k"], kv), (s["v"], kv)):
                _set(layer, path, _linear(layer.get_submodule(path), hidden, n * hd))
        _set(layer, s["o"], _linear(layer.get_submodule(s["o"]), heads * hd, hidden))
        if s.get("head_norms_full_width") and s.get("head_norms"):
            for path, n in zip(s["head_norms"], (heads, kv)):
                norm = layer.get_submodule(path)
                norm.weight = nn.Parameter(norm.weight.data.new_ones(n * hd))
        if s.get("gate_up"):
            _set(layer, s["gate_up"], _linear(layer.get_submodule(s["gate_up"]), hidden, 2 * inter))
        else:
            for path in (s["gate"], s["up"]):
                _set(layer, path, _linear(layer.get_submodule(path), hidden, inter))
        _set(layer, s["down"], _linear(layer.get_submodule(s["down"]), inter, hidden))
        for name, value in (("num_heads", heads), ("num_attention_heads", heads), ("num_key_value_heads", kv)):
            if hasattr(attn, name):
                setattr(attn, name, value)
        attn.num_key_value_groups = heads // kv
        if s.get("heads_from_config") and hasattr(attn, "config"):
            attn.config = copy.copy(config)
            attn.config.num_attention_heads, attn.config.num_key_value_heads = heads, kv
        mlp = layer.get_submodule(s["down"].rsplit(".", 1)[0])
        if hasattr(mlp, "intermediate_size"):
            mlp.intermediate_size = inter
    for name, eps in (record.get("norm_eps") or {}).items():
        norm = model.get_submodule(name)
        setattr(norm, "variance_epsilon" if hasattr(norm, "variance_epsilon") else "eps", float(eps))


class PrunedForCausalLM(_Base):
    def __init__(self, config):
        super().__init__(config)
        resize_layers(self, config)
