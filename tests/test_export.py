"""Exports load back with identical logits: plain from_pretrained for uniform widths, the
project's loader (no remote code) for per-layer widths."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from pruner.export import load_pruned, save
from pruner.models import load_model
from pruner.prune import Plan, apply_plan

from conftest import tiny_model


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_uniform_widths_load_with_plain_transformers(tmp_path, calib):
    model = tiny_model(n_heads=4, n_kv=2)
    plan = Plan(attn_keep={i: [1] for i in range(3)}, mlp_keep={i: list(range(0, 48, 2)) for i in range(3)})
    pruned = apply_plan(model, plan)
    assert "layer_widths" not in pruned.config.pruning
    save(pruned, tmp_path, recipe={"criterion": "l1", "ratio": 0.5})
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert reloaded.config.num_attention_heads == 2 and reloaded.config.intermediate_size == 24
    torch.testing.assert_close(logits(reloaded, calib), logits(pruned, calib), rtol=0, atol=0)
    assert json.loads((tmp_path / "pruning.json").read_text())["recipe"]["criterion"] == "l1"
    assert not list(tmp_path.glob("*.bin")) and list(tmp_path.glob("*.safetensors"))


@pytest.mark.parametrize("tie", [False, True])
def test_per_layer_widths_round_trip(tmp_path, calib, tie):
    model = tiny_model(n_heads=4, n_kv=2, tie=tie)
    plan = Plan(attn_keep={1: [0]}, mlp_keep={0: list(range(10)), 2: list(range(30))})
    pruned = apply_plan(model, plan)
    widths = pruned.config.pruning["layer_widths"]
    assert [w["intermediate_size"] for w in widths] == [10, 48, 30]
    save(pruned, tmp_path)
    for loaded in (load_pruned(tmp_path, device="cpu")[0], load_model(str(tmp_path), device="cpu")[0]):
        torch.testing.assert_close(logits(loaded, calib), logits(pruned, calib), rtol=0, atol=0)
        assert (loaded.lm_head.weight is loaded.model.embed_tokens.weight) == tie


def test_hidden_and_layer_pruned_round_trip(tmp_path, calib):
    model = tiny_model(n_heads=4, n_kv=2, layers=4)
    pruned = apply_plan(model, Plan(hidden_keep=list(range(0, 32, 2))[:12] + [31, 5, 7, 9], drop_layers=[2]))
    save(pruned, tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert reloaded.config.hidden_size == 16 and reloaded.config.num_hidden_layers == 3
    torch.testing.assert_close(logits(reloaded, calib), logits(pruned, calib), rtol=0, atol=0)
