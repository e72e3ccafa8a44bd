"""One description per decoder family: where every projection and norm of a layer lives.

Everything else in the engine reads the structure from here: the coupled groups (`groups.py`)
are derived from an `Arch`, and the same group objects drive scoring, slicing, sensitivity
probes and bias compensation. Adding a family = one `Arch` entry + its tiny-model tests.

Paths are relative to one decoder layer (`model.model.layers[i]`). A fused projection (Phi-3's
`qkv_proj`, `gate_up_proj`) is one path whose rows hold the parts in order: q | k | v and
gate | up. Norm positions in a layer, in execution order: before attention, after attention
(on the attention output, Gemma 2/3 and OLMo 2), before the MLP, after the MLP.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn


class UnsupportedArchitecture(RuntimeError):
    """The model is not a decoder family this engine describes."""


@dataclass(frozen=True)
class Arch:
    name: str
    model_types: tuple[str, ...]
    q: str | None = "self_attn.q_proj"          # None when fused into `qkv`
    k: str | None = "self_attn.k_proj"
    v: str | None = "self_attn.v_proj"
    qkv: str | None = None                      # fused q | k | v rows (Phi-3)
    o: str = "self_attn.o_proj"
    gate: str | None = "mlp.gate_proj"          # None when fused into `gate_up`
    up: str | None = "mlp.up_proj"
    gate_up: str | None = None                  # fused gate | up rows (Phi-3)
    down: str = "mlp.down_proj"
    pre_attn_norms: tuple[str, ...] = ("input_layernorm",)
    post_attn_norms: tuple[str, ...] = ()
    pre_mlp_norms: tuple[str, ...] = ("post_attention_layernorm",)
    post_mlp_norms: tuple[str, ...] = ()
    head_norms: tuple[str, str] | None = None   # (q_norm, k_norm)
    head_norms_full_width: bool = False         # True: norm over all heads (OLMo 2), sliced with them
    norm_offset: float = 0.0                    # 1.0: RMSNorm applies (1 + w) (Gemma)
    embed_scaled: bool = False                  # embeddings x sqrt(hidden_size) (Gemma)
    attn_bias_flag: str | None = "attention_bias"   # config switch giving o_proj a bias
    mlp_bias_flag: str | None = "mlp_bias"          # config switch giving down_proj a bias
    heads_from_config: bool = False             # attention reads head counts from its config (Phi-3)

    # ------------------------------------------------------------------ module access
    def attn_inputs(self) -> tuple[str, ...]:
        """The attention projections reading the residual stream: q, k, v (or the fused qkv)."""
        return (self.qkv,) if self.qkv else (self.q, self.k, self.v)

    def mlp_inputs(self) -> tuple[str, ...]:
        """The MLP projections reading the residual stream: gate, up (or the fused gate_up)."""
        return (self.gate_up,) if self.gate_up else (self.gate, self.up)

    def attention_module(self, layer: nn.Module) -> nn.Module:
        return layer.get_submodule(self.o.rsplit(".", 1)[0])

    def attention_shape(self, layer: nn.Module) -> tuple[int, int, int]:
        """(query heads, KV heads, head_dim) of one decoder layer, read from its weights."""
        head_dim = int(self.attention_module(layer).head_dim)
        n_q = layer.get_submodule(self.o).in_features // head_dim
        if self.qkv:
            n_kv = (layer.get_submodule(self.qkv).out_features - n_q * head_dim) // (2 * head_dim)
        else:
            n_kv = layer.get_submodule(self.k).out_features // head_dim
        return n_q, n_kv, head_dim

    def mlp_width(self, layer: nn.Module) -> int:
        return layer.get_submodule(self.down).in_features

    def residual_readers(self) -> tuple[str, ...]:
        """Linears reading the residual stream (input columns = hidden channels), in order."""
        return self.attn_inputs() + self.mlp_inputs()

    def lora_targets(self) -> tuple[str, ...]:
        """Module names (last path part) LoRA adapts: every projection of attention and MLP."""
        return tuple(p.rsplit(".", 1)[-1] for p in self.bias_paths("attn") + self.bias_paths("mlp"))

    def bias_paths(self, block: str) -> tuple[str, ...]:
        """The projections one config bias switch controls ("attn" or "mlp"), in execution order."""
        if block == "attn":
            return self.attn_inputs() + (self.o,)
        return self.mlp_inputs() + (self.down,)

    def can_compensate(self, block: str) -> bool:
        """Whether the family's config can give o_proj ("attn") / down_proj ("mlp") a bias."""
        return (self.attn_bias_flag if block == "attn" else self.mlp_bias_flag) is not None

    # ------------------------------------------------------------------ keeping modules in sync
    def sync_layer(self, layer: nn.Module, config) -> None:
        """Head counts and widths of a layer's modules from its (sliced) weights."""
        n_q, n_kv, _ = self.attention_shape(layer)
        attn = self.attention_module(layer)
        for name, value in (("num_heads", n_q), ("num_attention_heads", n_q),
                            ("num_key_value_heads", n_kv), ("num_key_value_groups", n_q // n_kv)):
            if hasattr(attn, name) or name == "num_key_value_groups":
                setattr(attn, name, value)
        if self.heads_from_config and hasattr(attn, "config"):
            if attn.config is config or getattr(attn.config, "num_attention_heads", n_q) != n_q:
                attn.config = copy.copy(config)      # this layer's own head counts
            attn.config.num_attention_heads, attn.config.num_key_value_heads = n_q, n_kv
        mlp = layer.get_submodule(self.down.rsplit(".", 1)[0])
        if hasattr(mlp, "intermediate_size"):
            mlp.intermediate_size = self.mlp_width(layer)

    def layer_norm_paths(self) -> tuple[str, ...]:
        return self.pre_attn_norms + self.post_attn_norms + self.pre_mlp_norms + self.post_mlp_norms


def rescale_norm(norm: nn.Module, keep: torch.Tensor, offset: float, factor: float) -> None:
    """Keep channels `keep` of an RMSNorm, multiplying its effective weight (offset + w) by `factor`."""
    w = norm.weight.data.index_select(0, keep.to(norm.weight.device)).float()
    w = (offset + w) * factor - offset
    norm.weight = nn.Parameter(w.to(norm.weight.dtype), requires_grad=norm.weight.requires_grad)


def rms_keep_factor(n_before: int, n_after: int) -> float:
    """RMS over n_after channels differs from RMS over n_before channels of which the removed are
    zero by sqrt(n_before / n_after): multiply the weight by it and eps by n_before / n_after."""
    return math.sqrt(n_before / n_after)


def norm_eps(norm: nn.Module) -> float | None:
    """An RMSNorm's epsilon (transformers names it variance_epsilon or eps)."""
    eps = getattr(norm, "variance_epsilon", getattr(norm, "eps", None))
    return eps if isinstance(eps, float) else None


def set_norm_eps(norm: nn.Module, eps: float) -> None:
    setattr(norm, "variance_epsilon" if hasattr(norm, "variance_epsilon") else "eps", float(eps))


def scale_eps(norm: nn.Module, scale: float) -> None:
    eps = norm_eps(norm)
    if eps is not None:
        set_norm_eps(norm, eps * scale)


LLAMA = Arch("llama", ("llama",))
ARCHS: tuple[Arch, ...] = (
    LLAMA,
    Arch("mistral", ("mistral",), attn_bias_flag=None, mlp_bias_flag=None),
    Arch("qwen2", ("qwen2",), attn_bias_flag=None, mlp_bias_flag=None),
    Arch("qwen3", ("qwen3",), head_norms=("self_attn.q_norm", "self_attn.k_norm"), mlp_bias_flag=None),
    Arch("gemma", ("gemma",), norm_offset=1.0, embed_scaled=True, mlp_bias_flag=None),
    Arch("gemma2", ("gemma2",), post_attn_norms=("post_attention_layernorm",),
         pre_mlp_norms=("pre_feedforward_layernorm",), post_mlp_norms=("post_feedforward_layernorm",),
         norm_offset=1.0, embed_scaled=True, mlp_bias_flag=None),
    Arch("gemma3_text", ("gemma3_text",), post_attn_norms=("post_attention_layernorm",),
         pre_mlp_norms=("pre_feedforward_layernorm",), post_mlp_norms=("post_feedforward_layernorm",),
         head_norms=("self_attn.q_norm", "self_attn.k_norm"), norm_offset=1.0, embed_scaled=True,
         mlp_bias_flag=None),
    Arch("phi3", ("phi3",), q=None, k=None, v=None, qkv="self_attn.qkv_proj", gate=None, up=None,
         gate_up="mlp.gate_up_proj", attn_bias_flag=None, mlp_bias_flag=None, heads_from_config=True),
    Arch("granite", ("granite",)),
    Arch("smollm3", ("smollm3",)),
    Arch("olmo2", ("olmo2",), pre_attn_norms=(), post_attn_norms=("post_attention_layernorm",),
         pre_mlp_norms=(), post_mlp_norms=("post_feedforward_layernorm",),
         head_norms=("self_attn.q_norm", "self_attn.k_norm"), head_norms_full_width=True,
         mlp_bias_flag=None),
)
BY_MODEL_TYPE = {t: a for a in ARCHS for t in a.model_types}
MIXTURE_OF_EXPERTS = ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v2", "deepseek_v3",
                      "granitemoe", "phimoe")


def arch_for(model_type: str) -> Arch:
    if model_type in BY_MODEL_TYPE:
        return BY_MODEL_TYPE[model_type]
    supported = ", ".join(sorted(BY_MODEL_TYPE))
    if model_type in MIXTURE_OF_EXPERTS:
        raise UnsupportedArchitecture(
            f"model_type={model_type!r} is a mixture of experts: pruning experts and the router's rows "
            f"is not implemented, so it is refused rather than pruned inexactly. Supported dense "
            f"families: {supported}.")
    raise UnsupportedArchitecture(f"model_type={model_type!r} is not supported; supported families: "
                                  f"{supported}.")


def arch_of(model) -> Arch:
    return arch_for(getattr(model.config, "model_type", "?"))
