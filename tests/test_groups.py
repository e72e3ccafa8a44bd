"""Coupled groups are exact: zeroing a group's slices == physically removing that group."""

import pytest
import torch

from pruner.groups import attention_family, describe_layer, families, hidden_family, mlp_family
from pruner.prune import Plan, apply_plan

from conftest import tiny_model


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def zeroed(model, family, groups):
    z = __import__("copy").deepcopy(model)
    params = dict(z.named_parameters())
    with torch.no_grad():
        for g in groups:
            for name, dim, idx in family.group(g):
                params[name].index_fill_(dim, idx, 0.0)
    return z


def removal_plan(family, groups):
    keep = [g for g in range(family.n_groups) if g not in groups]
    if family.kind == "attn":
        return Plan(attn_keep={family.layer: keep})
    if family.kind == "mlp":
        return Plan(mlp_keep={family.layer: keep})
    return Plan(hidden_keep=keep)


@pytest.mark.parametrize("trial", range(3))
@pytest.mark.parametrize("kind", ["attn", "mlp", "hidden"])
def test_zeroed_equals_removed(model, calib, kind, trial):
    gen = torch.Generator().manual_seed(trial)
    layer = int(torch.randint(0, 3, (1,), generator=gen))
    family = {"attn": lambda: attention_family(model, layer), "mlp": lambda: mlp_family(model, layer),
              "hidden": lambda: hidden_family(model)}[kind]()
    n_remove = 1 if kind == "attn" else 1 + trial * 3
    groups = torch.randperm(family.n_groups, generator=gen)[:n_remove].tolist()
    expected = logits(zeroed(model, family, groups), calib)
    pruned = apply_plan(model, removal_plan(family, groups))
    got = logits(pruned, calib)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_tied_embeddings_stay_tied(calib):
    m = tiny_model(tie=True)
    fam = hidden_family(m)
    assert all(mem.role != "lm_head" for mem in fam.members)
    expected = logits(zeroed(m, fam, [3, 7]), calib)
    pruned = apply_plan(m, removal_plan(fam, [3, 7]))
    assert pruned.lm_head.weight is pruned.model.embed_tokens.weight
    assert pruned.config.hidden_size == 30
    torch.testing.assert_close(logits(pruned, calib), expected, atol=1e-5, rtol=1e-5)


def test_biases_sliced_with_rows(calib):
    m = tiny_model(bias=True)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if n.endswith("bias"):
                p.normal_()
    for fam in (attention_family(m, 1), mlp_family(m, 2), hidden_family(m)):
        expected = logits(zeroed_with_bias(m, fam, [1]), calib)
        got = logits(apply_plan(m, removal_plan(fam, [1])), calib)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def zeroed_with_bias(model, family, groups):
    z = zeroed(model, family, groups)
    params = dict(z.named_parameters())
    with torch.no_grad():
        for g in groups:
            for name, dim, idx in family.group(g):
                bias = params.get(name[:-len("weight")] + "bias")
                if bias is not None and dim == 0:
                    bias.index_fill_(0, idx, 0.0)
    return z


def test_gqa_group_holds_its_query_heads():
    m = tiny_model(n_heads=6, n_kv=2, hidden=48)   # 3 query heads per KV head, head_dim 8
    fam = attention_family(m, 0)
    q_idx = fam.group(1)[0][2]
    assert q_idx.tolist() == list(range(24, 48))          # query heads 3, 4, 5
    assert fam.group(1)[1][2].tolist() == list(range(8, 16))   # k head 1
    assert [r for r in (mem.role for mem in fam.members)] == ["q", "k", "v", "o"]


def test_describe_layer_counts():
    m = tiny_model(n_heads=4, n_kv=2)
    df = describe_layer(m, 0)
    attn = df[df.kind == "attn"]
    # per KV group: q 16 rows x 32, k 8x32, v 8x32, o 32x16 columns
    assert attn.groupby("group").n_params.sum().tolist() == [16 * 32 + 8 * 32 * 2 + 32 * 16] * 2
    assert set(df.kind) == {"attn", "mlp"}
    assert len(families(m, ("attn", "mlp", "hidden"))) == 7
