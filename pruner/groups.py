"""Coupled structures (LLM-Pruner's dependency groups), derived from a family's `Arch`.

A `Family` is a set of groups that partition the same slices, e.g. all KV groups of one layer.
Each `Member` is one weight read along one dimension, with `owner[i]` = the group that owns
position i of that dimension (-1 = not part of this family: the k rows of a fused qkv weight
in the q member, say). A group is the list of (parameter, dim, indices) where its owner matches,
in execution order, so "first" and "last" aggregations are well defined:

- attention, one group per KV head g (grouped-query attention): q rows of the n_rep query
  heads that read KV head g, k and v rows of head g, (OLMo 2: the matching q_norm / k_norm
  channels, whose norm runs over all heads), o_proj input columns of those query heads. With
  multi-head attention (n_rep = 1) a group is one head.
- query heads (finer, for grouped-query attention): one group per query head, its q rows (and
  q_norm channels) and o_proj columns; every KV head stays, and plans remove as many heads from
  each KV group.
- MLP, one group per intermediate channel c: gate row c, up row c (fused: both halves of
  gate_up_proj), down column c.
- hidden, one group per residual-stream channel c (the paper's "Channel" strategy): embedding
  column c, every residual norm's weight c, column c of every matrix reading the stream, row c
  of every matrix writing it, lm_head column c. A tied lm_head is the embedding.

The same Family slices the model (`slice`), folds removed channels' mean output into a bias
(`compensate`) and tells sensitivity probes which inputs of its last weight survive
(`kept_inputs`): the structure is written once, in `arch.py`, and read here.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import pandas as pd
import torch
from torch import nn

from .arch import Arch, arch_of, rescale_norm, rms_keep_factor, scale_eps

KINDS = ("attn", "qhead", "mlp", "hidden")


@dataclass(frozen=True)
class Member:
    """One weight of a family, read along `dim` (0 = output rows, 1 = input columns)."""

    param: str            # name in model.named_parameters(), e.g. "model.layers.3.mlp.up_proj.weight"
    dim: int
    owner: torch.Tensor   # (size along dim,) int64 group index of each position, -1 = none
    role: str             # short display name: q, k, v, o, gate, up, down, embed, norm, lm_head

    @property
    def module(self) -> str:
        return self.param[: -len(".weight")]

    def indices(self, group: int) -> torch.Tensor:
        return torch.nonzero(self.owner == group).flatten()

    def kept_positions(self, kept) -> torch.Tensor:
        """Positions along `dim` that survive when groups `kept` stay (unowned positions stay)."""
        keep = (self.owner < 0) | torch.isin(self.owner, torch.as_tensor(list(kept), dtype=torch.long))
        return torch.nonzero(keep).flatten()


@dataclass(frozen=True)
class Family:
    """All groups of one kind in one layer (layer -1 for the model-wide hidden channels)."""

    kind: str
    layer: int
    n_groups: int
    members: tuple[Member, ...]   # execution order
    arch: Arch

    @property
    def block(self) -> str:
        """"attn", "mlp" or "hidden": which part of the layer the family cuts."""
        return "attn" if self.kind in ("attn", "qhead") else self.kind

    @property
    def last(self) -> Member:
        """The member that writes the block's output (o_proj / down_proj, read by column)."""
        return self.members[-1]

    def group(self, g: int) -> list[tuple[str, int, torch.Tensor]]:
        """Group g as (parameter name, dim, indices) in execution order."""
        return [(m.param, m.dim, m.indices(g)) for m in self.members]

    def kept_inputs(self, kept) -> torch.Tensor:
        """Input positions of the last weight (o_proj / down_proj) that survive `kept` groups."""
        return self.last.kept_positions(kept)

    # ------------------------------------------------------------------ surgery
    def check_keep(self, model, kept) -> None:
        if len(kept) == 0:
            raise ValueError(f"a plan keeps no {self.kind} group in layer {self.layer}")
        if self.kind == "qhead":
            n_q, n_kv, _ = self.arch.attention_shape(model.model.layers[self.layer])
            per_group = torch.bincount(torch.as_tensor(list(kept)) // (n_q // n_kv), minlength=n_kv)
            if (per_group != per_group[0]).any():
                raise ValueError(f"layer {self.layer}: query heads must stay uniform across {n_kv} KV "
                                 f"groups, got {per_group.tolist()} per group")

    def compensate(self, model, kept, input_mean: torch.Tensor | None) -> None:
        """Fold the removed inputs' mean contribution W[:, removed] @ E[x_removed] into the bias of
        the last weight (FLAP's bias compensation). Call before `slice`."""
        if input_mean is None or self.kind == "hidden":
            return
        linear = model.get_submodule(self.last.module)
        removed = torch.ones(linear.in_features, dtype=torch.bool)
        removed[self.kept_inputs(kept)] = False
        if not removed.any():
            return
        w = linear.weight.data
        removed = removed.to(w.device)
        delta = w[:, removed].double() @ input_mean.to(w.device)[removed].double()
        bias = linear.bias.data.double() if linear.bias is not None else torch.zeros_like(delta)
        linear.bias = nn.Parameter((bias + delta).to(w.dtype), requires_grad=w.requires_grad)

    def slice(self, model, kept) -> None:
        """Physically remove every group not in `kept`, in place, and update module attributes and
        the config so the model stays a consistent transformers model."""
        kept = sorted(int(g) for g in kept)
        self.check_keep(model, kept)
        by_weight = defaultdict(list)
        for m in self.members:
            by_weight[(m.param, m.dim)].append(m)
        tied = _tied(model)
        d_before = model.model.embed_tokens.weight.shape[1]
        for (param, dim), members in by_weight.items():
            owner = torch.full_like(members[0].owner, -1)
            for m in members:
                owner = torch.where(m.owner >= 0, m.owner, owner)
            keep = Member(param, dim, owner, members[0].role).kept_positions(kept)
            _slice_module(model.get_submodule(members[0].module), dim, keep, members[0].role,
                          self.arch.norm_offset)
        if self.kind == "hidden":
            self._finish_hidden(model, d_before, tied)
        else:
            self.arch.sync_layer(model.model.layers[self.layer], model.config)

    def _finish_hidden(self, model, d_before: int, tied: bool) -> None:
        config, embed = model.config, model.model.embed_tokens
        d = embed.weight.shape[1]
        scale = d_before / d
        if getattr(config, "head_dim", None) is None:
            config.head_dim = config.hidden_size // config.num_attention_heads
        if self.arch.embed_scaled:
            # embeddings are multiplied by sqrt(hidden_size): keep the product, and for a tied
            # lm_head undo the larger embedding in the final norm, which feeds only lm_head
            embed.weight.data.mul_(rms_keep_factor(d_before, d))
            if hasattr(embed, "embed_scale"):
                embed.embed_scale.fill_(d ** 0.5)
                embed.scalar_embed_scale = d ** 0.5
            if tied:
                norm = model.model.norm
                rescale_norm(norm, torch.arange(d), self.arch.norm_offset, 1.0 / rms_keep_factor(d_before, d))
        if tied:
            model.lm_head.weight = embed.weight
            model.lm_head.in_features = d
        config.hidden_size = d
        config.rms_norm_eps = float(config.rms_norm_eps) * scale


def _tied(model) -> bool:
    return model.lm_head.weight is model.model.embed_tokens.weight


def _slice_module(module: nn.Module, dim: int, keep: torch.Tensor, role: str, norm_offset: float) -> None:
    """Keep positions `keep` along `dim` of one Linear / Embedding / norm, in place."""
    keep = keep.to(module.weight.device)
    if role == "norm":
        n_before = module.weight.shape[0]
        rescale_norm(module, keep, norm_offset, rms_keep_factor(n_before, len(keep)))
        scale_eps(module, n_before / len(keep))
        return
    weight = module.weight.data.index_select(dim, keep).clone()
    module.weight = nn.Parameter(weight, requires_grad=module.weight.requires_grad)
    if isinstance(module, nn.Embedding):
        module.embedding_dim = len(keep)
        return
    if dim == 0:
        module.out_features = len(keep)
        if module.bias is not None:
            module.bias = nn.Parameter(module.bias.data.index_select(0, keep).clone(),
                                       requires_grad=module.bias.requires_grad)
    else:
        module.in_features = len(keep)


# ----------------------------------------------------------------------------- families

def _blocks(n_positions: int, width: int) -> torch.Tensor:
    """Positions 0..n-1 in consecutive blocks of `width`: owner = position // width."""
    return torch.arange(n_positions) // width


def _fused(parts: list[torch.Tensor | int], index: int) -> torch.Tensor:
    """Owner over a fused weight's rows: part `index` gets its owner, the other parts -1."""
    out = []
    for i, part in enumerate(parts):
        size = part if isinstance(part, int) else len(part)
        out.append(parts[index] if i == index else torch.full((size,), -1, dtype=torch.long))
    return torch.cat(out)


def _attention_members(arch: Arch, model, layer: int, q_owner, kv_owner) -> list[Member]:
    """q / k / v (+ full-width head norms) members in execution order; kv_owner None = k/v stay."""
    prefix = f"model.layers.{layer}."
    n_q, n_kv, head_dim = arch.attention_shape(model.model.layers[layer])
    kv_size = n_kv * head_dim
    kv = kv_owner if kv_owner is not None else torch.full((kv_size,), -1, dtype=torch.long)
    if arch.qkv:
        parts = [q_owner, kv, kv]
        members = [Member(prefix + arch.qkv + ".weight", 0, _fused(parts, i), r)
                   for i, r in enumerate(("q", "k", "v"))]
        if kv_owner is None:
            members = members[:1]
    else:
        members = [Member(prefix + arch.q + ".weight", 0, q_owner, "q")]
        if kv_owner is not None:
            members += [Member(prefix + arch.k + ".weight", 0, kv_owner, "k"),
                        Member(prefix + arch.v + ".weight", 0, kv_owner, "v")]
    if arch.head_norms and arch.head_norms_full_width:
        members.append(Member(prefix + arch.head_norms[0] + ".weight", 0, q_owner, "norm"))
        if kv_owner is not None:
            members.append(Member(prefix + arch.head_norms[1] + ".weight", 0, kv_owner, "norm"))
    return members


def attention_family(model, layer: int) -> Family:
    """One group per KV head of `layer`: its query heads, k/v rows and o columns."""
    arch = arch_of(model)
    n_q, n_kv, head_dim = arch.attention_shape(model.model.layers[layer])
    n_rep = n_q // n_kv
    q_owner = _blocks(n_q * head_dim, n_rep * head_dim)        # q head h -> kv group h // n_rep
    kv_owner = _blocks(n_kv * head_dim, head_dim)
    members = _attention_members(arch, model, layer, q_owner, kv_owner)
    members.append(Member(f"model.layers.{layer}.{arch.o}.weight", 1, q_owner, "o"))
    return Family("attn", layer, n_kv, tuple(members), arch)


def query_head_family(model, layer: int) -> Family:
    """One group per query head: its q rows and o_proj columns; every KV head stays.

    Removing the same number of query heads from each KV group keeps heads-per-group uniform,
    so the layer stays a standard grouped-query attention with fewer query heads.
    """
    arch = arch_of(model)
    n_q, _, head_dim = arch.attention_shape(model.model.layers[layer])
    owner = _blocks(n_q * head_dim, head_dim)
    members = _attention_members(arch, model, layer, owner, None)
    members.append(Member(f"model.layers.{layer}.{arch.o}.weight", 1, owner, "o"))
    return Family("qhead", layer, n_q, tuple(members), arch)


def mlp_family(model, layer: int) -> Family:
    """One group per intermediate channel of `layer`: gate/up rows and the down column."""
    arch = arch_of(model)
    width = arch.mlp_width(model.model.layers[layer])
    prefix = f"model.layers.{layer}."
    owner = torch.arange(width)
    if arch.gate_up:
        members = [Member(prefix + arch.gate_up + ".weight", 0, _fused([owner, width], 0), "gate"),
                   Member(prefix + arch.gate_up + ".weight", 0, _fused([width, owner], 1), "up")]
    else:
        members = [Member(prefix + arch.gate + ".weight", 0, owner, "gate"),
                   Member(prefix + arch.up + ".weight", 0, owner, "up")]
    members.append(Member(prefix + arch.down + ".weight", 1, owner, "down"))
    return Family("mlp", layer, width, tuple(members), arch)


def hidden_family(model) -> Family:
    """One group per residual-stream channel, across the whole model."""
    arch = arch_of(model)
    hidden = model.model.embed_tokens.weight.shape[1]
    owner = torch.arange(hidden)
    members = [Member("model.embed_tokens.weight", 1, owner, "embed")]
    for i in range(len(model.model.layers)):
        p = f"model.layers.{i}."

        def norms(paths):
            return [Member(p + n + ".weight", 0, owner, "norm") for n in paths]

        def readers(paths):
            return [Member(p + n + ".weight", 1, owner, n.rsplit(".", 1)[-1].split("_")[0]) for n in paths]
        members += norms(arch.pre_attn_norms) + readers(arch.attn_inputs())
        members += [Member(p + arch.o + ".weight", 0, owner, "o")] + norms(arch.post_attn_norms)
        members += norms(arch.pre_mlp_norms) + readers(arch.mlp_inputs())
        members += [Member(p + arch.down + ".weight", 0, owner, "down")] + norms(arch.post_mlp_norms)
    members.append(Member("model.norm.weight", 0, owner, "norm"))
    if not _tied(model):
        members.append(Member("lm_head.weight", 1, owner, "lm_head"))
    return Family("hidden", -1, hidden, tuple(members), arch)


FAMILY_BUILDERS = {"attn": attention_family, "qhead": query_head_family, "mlp": mlp_family}


def families(model, kinds=("attn", "mlp")) -> list[Family]:
    """Every family of the requested kinds, layer by layer (hidden last)."""
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown group kinds {sorted(unknown)}; use {KINDS}")
    out = []
    for layer in range(len(model.model.layers)):
        out += [FAMILY_BUILDERS[k](model, layer) for k in ("attn", "qhead", "mlp") if k in kinds]
    if "hidden" in kinds:
        out.append(hidden_family(model))
    return out


def family(model, kind: str, layer: int = -1) -> Family:
    """The family of `kind` in `layer` (hidden: the model-wide one)."""
    return hidden_family(model) if kind == "hidden" else FAMILY_BUILDERS[kind](model, layer)


def group_slices(family: Family, group: int, layer: int | None = None) -> list[tuple[str, str, str]]:
    """(role, module, "rows 0-63" / "columns 5") of every slice of one group, in execution order,
    read off the family (fused projections name their own rows); `layer` keeps only that
    layer's slices of the model-wide hidden family."""
    out = []
    for m in family.members:
        if layer is not None and family.kind == "hidden" and not m.param.startswith(f"model.layers.{layer}."):
            continue
        idx = m.indices(group)
        if idx.numel():
            what = "weight" if m.role == "norm" else ("row" if m.dim == 0 else "column")
            out.append((m.role, m.module, f"{what}{'s' if idx.numel() > 1 else ''} {_ranges(idx)}"))
    return out


def group_param_counts(model, family: Family) -> torch.Tensor:
    """(n_groups,) number of weights each group holds (biases of sliced rows included)."""
    params = dict(model.named_parameters())
    counts = torch.zeros(family.n_groups, dtype=torch.long)
    for m in family.members:
        weight = params[m.param]
        per_position = weight.numel() // weight.shape[m.dim]
        if m.dim == 0 and m.role not in ("norm", "embed") and params.get(m.module + ".bias") is not None:
            per_position += 1
        valid = m.owner >= 0
        counts += torch.bincount(m.owner[valid], minlength=family.n_groups) * per_position
    return counts


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
