"""Coupled structures (LLM-Pruner's dependency groups), written out explicitly.

A `Family` is a set of groups that partition the same slices, e.g. all KV groups of one layer.
Each `Member` is one weight read along one dimension, with `owner[i]` = the group that owns
position i of that dimension. A group is then the list of (parameter, dim, indices) where its
owner matches, in execution order, so "first" and "last" aggregations are well defined:

- attention, one group per KV head g (grouped-query attention): q_proj rows of the n_rep query
  heads that read KV head g, k_proj and v_proj rows of head g, o_proj input columns of those
  query heads. With multi-head attention (n_rep = 1) a group is one head.
- query heads (finer, for grouped-query attention): one group per query head, its q_proj rows
  and o_proj columns; every KV head stays, and plans remove as many heads from each KV group.
- MLP, one group per intermediate channel c: gate_proj row c, up_proj row c, down_proj column c.
- hidden, one group per residual-stream channel c (the paper's "Channel" strategy): embedding
  column c, every norm's weight c, column c of every matrix reading the stream (q, k, v, gate,
  up, lm_head), row c of every matrix writing it (o, down). A tied lm_head is the embedding.

In-degree / out-degree dependency in the paper's terms: removing query rows (out-degree of the
input projection) forces removing the o_proj columns that read them (in-degree), and so on.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch

from .models import attention_shape, layers_of

KINDS = ("attn", "qhead", "mlp", "hidden")


@dataclass(frozen=True)
class Member:
    """One weight of a family, read along `dim` (0 = output rows, 1 = input columns)."""

    param: str            # name in model.named_parameters(), e.g. "model.layers.3.mlp.up_proj.weight"
    dim: int
    owner: torch.Tensor   # (size along dim,) int64 group index of each position, -1 = none
    role: str             # short display name: q, k, v, o, gate, up, down, embed, norm, lm_head

    def indices(self, group: int) -> torch.Tensor:
        return torch.nonzero(self.owner == group).flatten()


@dataclass(frozen=True)
class Family:
    """All groups of one kind in one layer (layer -1 for the model-wide hidden channels)."""

    kind: str
    layer: int
    n_groups: int
    members: tuple[Member, ...]   # execution order

    def group(self, g: int) -> list[tuple[str, int, torch.Tensor]]:
        """Group g as (parameter name, dim, indices) in execution order."""
        return [(m.param, m.dim, m.indices(g)) for m in self.members]


def _arange_owner(n_positions: int, width: int) -> torch.Tensor:
    """Positions 0..n-1 in consecutive blocks of `width`: owner = position // width."""
    return torch.arange(n_positions) // width


def attention_family(model, layer: int) -> Family:
    """One group per KV head of `layer`: its query heads, k/v rows and o columns."""
    n_q, n_kv, head_dim = attention_shape(model, layer)
    n_rep = n_q // n_kv
    prefix = f"model.layers.{layer}.self_attn."
    q_owner = _arange_owner(n_q * head_dim, n_rep * head_dim)   # q head h -> kv group h // n_rep
    kv_owner = _arange_owner(n_kv * head_dim, head_dim)
    members = (
        Member(prefix + "q_proj.weight", 0, q_owner, "q"),
        Member(prefix + "k_proj.weight", 0, kv_owner, "k"),
        Member(prefix + "v_proj.weight", 0, kv_owner, "v"),
        Member(prefix + "o_proj.weight", 1, q_owner, "o"),
    )
    return Family("attn", layer, n_kv, members)


def query_head_family(model, layer: int) -> Family:
    """One group per query head: its q_proj rows and o_proj columns; every KV head stays.

    Removing the same number of query heads from each KV group keeps heads-per-group uniform,
    so the layer stays a standard grouped-query attention with fewer query heads.
    """
    n_q, _, head_dim = attention_shape(model, layer)
    prefix = f"model.layers.{layer}.self_attn."
    owner = _arange_owner(n_q * head_dim, head_dim)
    members = (Member(prefix + "q_proj.weight", 0, owner, "q"),
               Member(prefix + "o_proj.weight", 1, owner, "o"))
    return Family("qhead", layer, n_q, members)


def mlp_family(model, layer: int) -> Family:
    """One group per intermediate channel of `layer`: gate/up rows and the down column."""
    width = layers_of(model)[layer].mlp.gate_proj.out_features
    prefix = f"model.layers.{layer}.mlp."
    owner = torch.arange(width)
    members = (
        Member(prefix + "gate_proj.weight", 0, owner, "gate"),
        Member(prefix + "up_proj.weight", 0, owner, "up"),
        Member(prefix + "down_proj.weight", 1, owner, "down"),
    )
    return Family("mlp", layer, width, members)


def hidden_family(model) -> Family:
    """One group per residual-stream channel, across the whole model."""
    hidden = model.model.embed_tokens.weight.shape[1]
    owner = torch.arange(hidden)
    members = [Member("model.embed_tokens.weight", 1, owner, "embed")]
    for i in range(len(layers_of(model))):
        p = f"model.layers.{i}."
        members += [
            Member(p + "input_layernorm.weight", 0, owner, "norm"),
            Member(p + "self_attn.q_proj.weight", 1, owner, "q"),
            Member(p + "self_attn.k_proj.weight", 1, owner, "k"),
            Member(p + "self_attn.v_proj.weight", 1, owner, "v"),
            Member(p + "self_attn.o_proj.weight", 0, owner, "o"),
            Member(p + "post_attention_layernorm.weight", 0, owner, "norm"),
            Member(p + "mlp.gate_proj.weight", 1, owner, "gate"),
            Member(p + "mlp.up_proj.weight", 1, owner, "up"),
            Member(p + "mlp.down_proj.weight", 0, owner, "down"),
        ]
    members.append(Member("model.norm.weight", 0, owner, "norm"))
    if not getattr(model.config, "tie_word_embeddings", False):
        members.append(Member("lm_head.weight", 1, owner, "lm_head"))
    return Family("hidden", -1, hidden, tuple(members))


def families(model, kinds=("attn", "mlp")) -> list[Family]:
    """Every family of the requested kinds, layer by layer (hidden last)."""
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown group kinds {sorted(unknown)}; use {KINDS}")
    out = []
    for layer in range(len(layers_of(model))):
        if "attn" in kinds:
            out.append(attention_family(model, layer))
        if "qhead" in kinds:
            out.append(query_head_family(model, layer))
        if "mlp" in kinds:
            out.append(mlp_family(model, layer))
    if "hidden" in kinds:
        out.append(hidden_family(model))
    return out


def group_param_counts(model, family: Family) -> torch.Tensor:
    """(n_groups,) number of weights each group holds (biases of sliced rows included)."""
    params = dict(model.named_parameters())
    counts = torch.zeros(family.n_groups, dtype=torch.long)
    for m in family.members:
        weight = params[m.param]
        per_position = weight.numel() // weight.shape[m.dim]
        bias = _bias_of(params, m)
        if bias is not None and m.dim == 0:
            per_position += 1
        valid = m.owner >= 0
        counts += torch.bincount(m.owner[valid], minlength=family.n_groups) * per_position
    return counts


def _bias_of(params: dict, member: Member):
    if not member.param.endswith(".weight") or member.role in ("norm", "embed"):
        return None
    return params.get(member.param[: -len("weight")] + "bias")


def _ranges(indices: torch.Tensor) -> str:
    """[0,1,2,5,6] -> '0-2, 5-6' for display."""
    idx = indices.tolist()
    if not idx:
        return ""
    parts, start, prev = [], idx[0], idx[0]
    for i in idx[1:] + [None]:
        if i is not None and i == prev + 1:
            prev = i
            continue
        parts.append(f"{start}-{prev}" if prev > start else f"{start}")
        if i is not None:
            start = prev = i
    return ", ".join(parts)


def describe_layer(model, layer: int) -> pd.DataFrame:
    """One row per (group, member) of a layer's attention and MLP groups, for display.

    Columns: kind, group, role, param, dim ("rows"/"columns"), indices (ranges), n_params.
    MLP groups are many; every one is listed (a UI can filter by group).
    """
    params = dict(model.named_parameters())
    rows = []
    for fam in (attention_family(model, layer), mlp_family(model, layer)):
        for m in fam.members:
            weight = params[m.param]
            per_position = weight.numel() // weight.shape[m.dim]
            for g in range(fam.n_groups):
                idx = m.indices(g)
                rows.append({"kind": fam.kind, "group": g, "role": m.role, "param": m.param,
                             "dim": "rows" if m.dim == 0 else "columns", "indices": _ranges(idx),
                             "n_params": int(idx.numel() * per_position)})
    return pd.DataFrame(rows)


def describe_groups(model) -> pd.DataFrame:
    """Per layer and kind: number of groups and parameters per group (the `inspect` table)."""
    rows = []
    for fam in families(model, ("attn", "mlp")):
        counts = group_param_counts(model, fam)
        rows.append({"layer": fam.layer, "kind": fam.kind, "groups": fam.n_groups,
                     "params_per_group": int(counts[0]) if len(counts) else 0,
                     "params": int(counts.sum())})
    return pd.DataFrame(rows)
