"""Every supported decoder family on tiny random models: the coupled groups are exact (zeroing a
group == removing it) for every granularity, exports round-trip with identical logits, the GQA
head-to-group mapping holds, and both recipes run from the CLI."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from pruner.__main__ import main
from pruner.activations import input_statistics
from pruner.arch import arch_of
from pruner.export import load_pruned, save
from pruner.groups import family
from pruner.importance import ScoreConfig, score
from pruner.models import UnsupportedModelError, check_supported
from pruner.prune import Plan, PruneConfig, apply_plan, layer_widths
from pruner.sensitivity import layer_sensitivity

from families import FAMILIES, tiny_family_model, tiny_tokenizer


@pytest.fixture
def ids():
    return torch.randint(3, 96, (3, 16), generator=torch.Generator().manual_seed(5))


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


def zeroed(model, fam, groups):
    """The reference: every slice (and dim-0 bias) of `groups` set to zero, nothing removed."""
    z = copy.deepcopy(model)
    params = dict(z.named_parameters())
    with torch.no_grad():
        for g in groups:
            for name, dim, idx in fam.group(g):
                if fam.arch.norm_offset and name.endswith("norm.weight"):
                    params[name].index_fill_(dim, idx, -fam.arch.norm_offset)   # (1 + w) = 0
                else:
                    params[name].index_fill_(dim, idx, 0.0)
                bias = params.get(name[: -len("weight")] + "bias")
                if bias is not None and dim == 0:
                    bias.index_fill_(0, idx, 0.0)
    return z


def removal(kind, layer, keep):
    return {"attn": Plan(attn_keep={layer: keep}), "qhead": Plan(qhead_keep={layer: keep}),
            "mlp": Plan(mlp_keep={layer: keep}), "hidden": Plan(hidden_keep=keep)}[kind]


REMOVED = {"attn": [1], "qhead": [1, 2], "mlp": [0, 5, 6, 47], "hidden": [3, 4, 9, 30]}


@pytest.mark.parametrize("kind", ["attn", "qhead", "mlp", "hidden"])
@pytest.mark.parametrize("name", FAMILIES)
def test_zeroed_equals_removed(name, kind, ids):
    model = tiny_family_model(name)
    layer = 1
    fam = family(model, kind, layer)
    gone = REMOVED[kind]
    keep = [g for g in range(fam.n_groups) if g not in gone]
    if kind == "hidden":      # transformers needs hidden_size % heads == 0 for a plain config
        keep = keep[:28]
        gone = [g for g in range(fam.n_groups) if g not in keep]
    expected = logits(zeroed(model, fam, gone), ids)
    pruned = apply_plan(model, removal(kind, layer, keep))
    torch.testing.assert_close(logits(pruned, ids), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits(model, ids), logits(tiny_family_model(name), ids))  # untouched


def saved_record(folder):
    return json.loads((folder / "config.json").read_text())["pruning"]


@pytest.mark.parametrize("name", FAMILIES)
def test_export_round_trip_per_layer_and_uniform(name, ids, tmp_path):
    model = tiny_family_model(name)
    per_layer = Plan(attn_keep={1: [0]}, mlp_keep={0: list(range(40)), 2: list(range(0, 48, 2))})
    uniform = Plan(qhead_keep={i: [0, 3] for i in range(3)}, mlp_keep={i: list(range(32)) for i in range(3)})
    for label, plan in (("per-layer", per_layer), ("uniform", uniform)):
        pruned = apply_plan(model, plan)
        folder = save(pruned, tmp_path / label)
        loaded, _ = load_pruned(folder, device="cpu")
        torch.testing.assert_close(logits(loaded, ids), logits(pruned, ids), atol=1e-5, rtol=1e-5)
        assert layer_widths(loaded).equals(layer_widths(pruned))
        if label == "uniform":    # a plain config: transformers alone loads it
            plain = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
            if name == "olmo2":
                # OLMo 2's q/k norms run over all heads: slicing them rescales their epsilon, which
                # a plain config cannot hold (recorded in pruning.norm_eps for load_pruned)
                assert set(saved_record(folder)["norm_eps"]) >= {"model.layers.0.self_attn.q_norm"}
            else:
                torch.testing.assert_close(logits(plain, ids), logits(pruned, ids), atol=1e-5, rtol=1e-5)
        saved = AutoConfig.from_pretrained(folder)
        for key in ("sliding_window", "final_logit_softcapping", "attn_logit_softcapping",
                    "query_pre_attn_scalar", "layer_types", "no_rope_layers", "embedding_multiplier",
                    "logits_scaling", "tie_word_embeddings"):
            assert getattr(saved, key, None) == getattr(model.config, key, None), key


@pytest.mark.parametrize("name", FAMILIES)
def test_decisive_query_head_lands_in_its_kv_group(name, ids):
    # 6 query heads over 3 KV heads: head 1 belongs to KV group 0 (the official code's modulo
    # fold would credit group 1)
    model = tiny_family_model(name, num_attention_heads=6, num_key_value_heads=3, hidden_size=48)
    arch = arch_of(model)
    layer = model.model.layers[1]
    with torch.no_grad():
        q = layer.get_submodule(arch.qkv or arch.q).weight
        q[8:16] *= 40.0
        layer.get_submodule(arch.o).weight[:, 8:16] *= 40.0
    df = score(model, ids, ScoreConfig("taylor-element1", kinds=("attn",)))
    assert df[df.layer == 1].set_index("group").score.idxmax() == 0


@pytest.mark.parametrize("name", FAMILIES)
def test_the_refits_layer_stream_runs_each_layer_as_the_model_does(name, ids):
    """The refit's stream records each layer's arguments with the later layers passed through
    (sliding-window and global layers get their own masks): run layer by layer, it gives the
    model's own hidden states, and every layer is left as it was."""
    from pruner.refit import LayerStream

    model = tiny_family_model(name)
    with torch.no_grad():
        states = model(input_ids=ids, output_hidden_states=True).hidden_states
    stream = LayerStream(model, ids, batch_size=2)
    assert all("forward" not in layer.__dict__ for layer in model.model.layers)
    assert [len(calls) for calls in stream.kwargs] == [len(model.model.layers)] * len(stream.kwargs)
    for layer in range(len(model.model.layers)):         # hidden_states[i] enters layer i
        torch.testing.assert_close(torch.cat(stream.hidden), states[layer], atol=1e-5, rtol=1e-5)
        stream.advance()


@pytest.mark.parametrize("name", FAMILIES)
def test_compensation_or_a_clear_refusal(name, ids):
    model = tiny_family_model(name)
    config, notes = PruneConfig(compensate=True, attn_share=0.0, amount=0.2).normalized(model)
    stats = input_statistics(model, ids)
    plan = Plan(mlp_keep={1: list(range(0, 48, 2))})
    if arch_of(model).can_compensate("mlp"):
        assert config.compensate and not notes
        pruned = apply_plan(model, plan, stats)
        down = model.model.layers[1].get_submodule(arch_of(model).down)
        removed = torch.arange(1, 48, 2)
        expected = down.weight.double()[:, removed] @ stats[(1, "mlp")].mean[removed]
        got = pruned.model.layers[1].get_submodule(arch_of(model).down).bias.double()
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)
        # the probe that masks the removed inputs with their means equals the sliced model's loss
        sens = layer_sensitivity(model, ids, plan, stats)
        from pruner.importance import causal_lm_loss
        with torch.no_grad():
            assert sens.loss.iloc[0] == pytest.approx(float(causal_lm_loss(pruned, ids)), rel=1e-5)
    else:
        assert not config.compensate and "not available" in notes[0]
        with pytest.raises(ValueError, match="not available"):
            apply_plan(model, plan, stats)


@pytest.mark.parametrize("name", FAMILIES)
def test_cli_default_recipe_and_paper_preset(name, tmp_path, capsys):
    tokenizer = tiny_tokenizer()
    source = tmp_path / "model"
    tiny_family_model(name, vocab=len(tokenizer), num_hidden_layers=10,
                      intermediate_size=128).save_pretrained(source)
    tokenizer.save_pretrained(source)
    for preset in ("default", "llm-pruner"):
        out = tmp_path / preset
        assert main(["prune", "--model", str(source), "--preset", preset, "--device", "cpu",
                     "--calib-samples", "4", "--calib-len", "32", "--out", str(out), "--json"]) == 0
        report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert 0.1 < report["ratio_params_removed"] < 0.3
        loaded, _ = load_pruned(out, device="cpu")
        check_supported(loaded)
        assert loaded.config.model_type == AutoConfig.from_pretrained(source).model_type


@pytest.mark.parametrize("model_type", ["mixtral", "qwen2_moe"])
def test_mixture_of_experts_is_refused_clearly(model_type):
    config = AutoConfig.for_model(model_type, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                                  num_attention_heads=4, num_key_value_heads=2, vocab_size=64)
    model = AutoModelForCausalLM.from_config(config)
    with pytest.raises(UnsupportedModelError, match="mixture of experts"):
        check_supported(model)


def test_per_layer_exports_load_in_plain_transformers_with_their_modeling_file(tmp_path, ids):
    """Per-layer widths: the export carries modeling_pruned.py (auto_map), so transformers alone
    loads it with trust_remote_code=True, checked in a fresh interpreter where this project is not
    importable (python -I, run from another folder); logits are identical."""
    import subprocess
    import sys

    plan = Plan(attn_keep={1: [0]}, mlp_keep={0: list(range(40)), 2: list(range(0, 48, 2))})
    expected = {}
    for name in FAMILIES:
        pruned = apply_plan(tiny_family_model(name), plan)
        folder = save(pruned, tmp_path / name)
        assert (folder / "modeling_pruned.py").is_file()
        assert json.loads((folder / "config.json").read_text())["auto_map"]["AutoModelForCausalLM"]
        expected[name] = logits(pruned, ids)
    torch.save({"ids": ids}, tmp_path / "ids.pt")
    script = (
        "import json, sys, torch\n"
        "from transformers import AutoModelForCausalLM\n"
        "assert 'pruner' not in sys.modules\n"
        f"ids = torch.load({str(tmp_path / 'ids.pt')!r})['ids']\n"
        "out = {}\n"
        f"for name in {list(FAMILIES)!r}:\n"
        f"    m = AutoModelForCausalLM.from_pretrained({str(tmp_path)!r} + '/' + name, trust_remote_code=True,\n"
        "                                             dtype=torch.float32)\n"
        "    with torch.no_grad():\n"
        "        torch.save(m(input_ids=ids).logits, " f"{str(tmp_path)!r}" " + '/' + name + '/logits.pt')\n"
        "    out[name] = type(m).__name__\n"
        "print(json.dumps(out))\n")
    run = subprocess.run([sys.executable, "-I", "-c", script], capture_output=True, text=True,
                         cwd=tmp_path, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    classes = json.loads(run.stdout.strip().splitlines()[-1])
    for name in FAMILIES:
        assert classes[name] == "PrunedForCausalLM"
        got = torch.load(tmp_path / name / "logits.pt")
        torch.testing.assert_close(got, expected[name], atol=1e-5, rtol=1e-5)
