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


def test_every_export_has_a_model_card(tmp_path, calib):
    from pruner.card import card_stats
    from pruner.recipes import recipe, recipe_record

    model = tiny_model(n_heads=4, n_kv=2)
    pruned = apply_plan(model, Plan(mlp_keep={1: list(range(24))}))          # per-layer widths
    score_config, prune_config = recipe("default")
    record = recipe_record(score_config, prune_config, {"source": "builtin", "samples": 10, "seq_len": 64,
                                                        "seed": 0}, "default", [0.3])
    stats = card_stats({"params_before": 1000, "params_after": 800, "macs_per_token_before": 900.0,
                        "macs_per_token_after": 700.0}, 55.0, 128.3, "WikiText-2, 16 windows")
    save(pruned, tmp_path, recipe=record, stats=stats)
    card = (tmp_path / "README.md").read_text()
    meta = card.split("---")[1]
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in meta
    assert "library_name: transformers" in meta and "pipeline_tag: text-generation" in meta
    assert "- llm-pruner" in meta and "- pruned" in meta
    assert score_config.criterion in card and "| parameters | 1,000 | 800 |" in card     # the recipe's criterion
    assert "| perplexity | 55.00 | 128.30 |" in card and "trust_remote_code=True" in card


def test_push_uploads_the_folder_and_never_shows_the_token(tmp_path, monkeypatch):
    import huggingface_hub

    from pruner.card import push

    calls = {}

    class FakeApi:
        def __init__(self, token):
            calls["token"] = token

        def create_repo(self, repo_id, exist_ok, private):
            calls["repo"] = repo_id

        def upload_folder(self, folder_path, repo_id):
            calls["folder"] = folder_path
            raise RuntimeError(f"403 forbidden for token {calls['token']}")

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    save(apply_plan(tiny_model(), Plan(mlp_keep={0: [0, 1]})), tmp_path)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    with pytest.raises(ValueError, match="HF_TOKEN"):
        push(tmp_path, "me/model")
    monkeypatch.setenv("HF_TOKEN", "hf_secret123")
    with pytest.raises(ValueError) as err:
        push(tmp_path, "me/model")
    assert "hf_secret123" not in str(err.value) and "***" in str(err.value)
    assert calls == {"token": "hf_secret123", "repo": "me/model", "folder": str(tmp_path)}


def test_the_card_says_how_much_was_removed_in_its_unit():
    from pruner.card import model_card
    from pruner.importance import ScoreConfig
    from pruner.prune import PruneConfig
    from pruner.recipes import recipe_record

    def removed_line(config):
        card = model_card({"recipe": recipe_record(ScoreConfig(), config, None, "base")})
        return next(line for line in card.splitlines() if line.startswith("- removed:"))

    assert removed_line(PruneConfig(amount=0.2)).startswith("- removed: 20% of the parameters,")
    assert removed_line(PruneConfig(amount=0.3, unit="groups")).startswith("- removed: a group ratio of 0.3,")
    assert "refitted by damped least squares" in removed_line(PruneConfig(compensate=True, refit=True))
