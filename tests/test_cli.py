"""The CLI's eval, recover and generate subcommands on a tiny local model (fast)."""
import json

import pytest

from pruner.__main__ import main


def last_json(capsys):
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_eval_json(tiny_folder, data_dir, capsys):
    assert main(["eval", "--model", tiny_folder, "--ppl", "wikitext2,ptb", "--tasks", "arc_easy,winogrande",
                 "--max-windows", "2", "--limit", "4", "--data-dir", str(data_dir), "--json"]) == 0
    out = last_json(capsys)
    assert set(out["ppl"]) == {"wikitext2", "ptb"} and set(out["acc"]) == {"arc_easy", "winogrande"}
    assert out["details"]["arc_easy"]["n"] == 4


def test_recover_saves_merged_model_and_adapter(tiny_folder, tmp_path, capsys):
    out_dir = tmp_path / "recovered"
    (tmp_path / "empty").mkdir()                 # no data folder: WikiText-2 from the shipped slice
    assert main(["recover", "--model", tiny_folder, "--teacher", tiny_folder, "--data", "builtin",
                 "--steps", "3", "--seq-len", "32", "--ppl-windows", "2", "--data-dir", str(tmp_path / "empty"),
                 "--out", str(out_dir), "--json"]) == 0
    out = last_json(capsys)
    assert out["steps"] == 3 and len(out["loss_curve"]) == 3 and out["ppl_after"] > 0
    assert (out_dir / "model.safetensors").is_file()
    assert (out_dir / "adapter" / "adapter_config.json").is_file()
    from pruner.models import load_model

    merged, _ = load_model(str(out_dir), device="cpu")          # trained and merged in place: a plain model
    assert not any("lora" in name for name, _ in merged.named_parameters())
    card = (out_dir / "README.md").read_text()
    assert "- lora" in card and "recovery: LoRA" in card


def test_generate_side_by_side(tiny_folder, capsys):
    assert main(["generate", "--model", tiny_folder, "--compare", tiny_folder, "--max-new-tokens", "4",
                 "--no-chat", "--json"]) == 0
    out = last_json(capsys)
    assert out["prompt"] == "The Leaning Tower of Pisa is known for"
    assert len(out["models"]) == 1 and out["tokens"] == 4     # same source listed twice: one entry


def test_bad_arguments_are_messages(tiny_folder, capsys):
    assert main(["eval", "--model", tiny_folder, "--ppl", "", "--tasks", "nonsense"]) == 2
    assert "unknown task" in capsys.readouterr().err
    assert main(["generate", "--model", tiny_folder, "--max-new-tokens", "100000"]) == 2
    assert "max_new_tokens" in capsys.readouterr().err


def test_prune_refuses_an_amount_the_groups_cannot_hold_before_calibrating(tiny_folder, tmp_path, capsys,
                                                                          monkeypatch):
    import pruner.__main__ as cli

    monkeypatch.setattr(cli, "_calib_ids", lambda *a, **k: pytest.fail("calibrated an unreachable amount"))
    assert main(["prune", "--model", tiny_folder, "--amount", "0.9", "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert "90% of all parameters cannot be removed" in err and "--hidden-share" in err
    assert not (tmp_path / "p").exists()


def test_prune_with_sensitivity_allocation(tiny_folder, tmp_path, capsys):
    assert main(["prune", "--model", tiny_folder, "--ratio", "0.3", "--allocation", "sensitivity",
                 "--compensate", "--recompute-means",
                 "--layers", "0:2", "--calib-samples", "2", "--calib-len", "16", "--out", str(tmp_path / "p"),
                 "--json"]) == 0
    out = last_json(capsys)
    assert out["recipe"]["prune"]["allocation"] == "sensitivity" and out["recipe"]["prune"]["recompute_means"]
    assert [(r["kind"], r["layer"]) for r in out["sensitivity"]] == [("qhead", 0), ("qhead", 1),
                                                                     ("mlp", 0), ("mlp", 1)]
    assert {"loss_increase", "removed", "kept"} <= set(out["sensitivity"][0])
    assert (tmp_path / "p" / "config.json").is_file()


@pytest.mark.parametrize("preset, check", [
    ("flap", lambda r: r["prune"]["allocation"] == "standardized" and r["score"]["criterion"] == "fluctuation"),
    ("shortgpt", lambda r: r["prune"]["strategy"] == "layer" and r["score"]["criterion"] == "block-influence"),
])
def test_prune_with_a_method_preset(tiny_folder, tmp_path, capsys, preset, check):
    assert main(["prune", "--model", tiny_folder, "--preset", preset, "--ratio", "0.3", "--layers", "0:2",
                 "--calib-samples", "2", "--calib-len", "16", "--out", str(tmp_path / "p"), "--json"]) == 0
    out = last_json(capsys)
    assert check(out["recipe"]) and out["params_after"] < out["params_before"]


def test_prune_minitron_saves_a_narrower_model_transformers_loads(tokenizer, tmp_path, capsys):
    from conftest import tiny_model
    from transformers import AutoModelForCausalLM

    # wide MLPs beside the 49k-token embeddings, so both axes hold a real share of the parameters
    folder = tmp_path / "wide"
    tiny_model(vocab=len(tokenizer), n_heads=4, n_kv=2, layers=2, hidden=64, inter=2048).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    assert main(["prune", "--model", str(folder), "--preset", "minitron", "--amount", "0.2", "--layers", "0:2",
                 "--calib-samples", "2", "--calib-len", "16", "--out", str(tmp_path / "p"), "--json"]) == 0
    printed = capsys.readouterr().out
    assert "hidden (embedding) channels: " in printed and " kept, " in printed
    out = json.loads(printed.strip().splitlines()[-1])
    assert out["recipe"]["prune"]["hidden_share"] == 0.5 and out["recipe"]["score"]["criterion"] == "activation"
    assert abs(out["params_before"] - out["params_after"] - 0.2 * out["params_before"]) < 0.01 * out["params_before"]
    hidden = json.loads((tmp_path / "p" / "config.json").read_text())["hidden_size"]
    assert hidden < 64 and hidden % 4 == 0
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "p")
    down = model.model.layers[0].mlp.down_proj.weight
    assert down.shape[0] == hidden and down.shape[1] < 2048                 # the MLPs lost channels too


def test_recover_with_full_finetuning_saves_no_adapter(tiny_folder, tmp_path, capsys):
    """--full-finetune: the merged model is the trained one, no adapter folder, the card says so."""
    out_dir = tmp_path / "tuned"
    assert main(["recover", "--model", tiny_folder, "--teacher", tiny_folder, "--data", "builtin",
                 "--steps", "2", "--seq-len", "32", "--ppl-windows", "0", "--full-finetune",
                 "--out", str(out_dir), "--json"]) == 0
    assert last_json(capsys)["steps"] == 2
    assert (out_dir / "model.safetensors").is_file() and not (out_dir / "adapter").exists()
    card = (out_dir / "README.md").read_text()
    assert "- fine-tuned" in card and "recovery: full fine-tuning" in card and "- lora" not in card
