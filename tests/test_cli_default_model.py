"""The issue's definition of done, on the real default model: the CLI prunes 20% of the
parameters, saves, and a fresh Python process loads the result and generates."""

import json
import subprocess
import sys

import pytest

from pruner.__main__ import main

from conftest import REPO

pytestmark = pytest.mark.slow


def run_cli(args, capsys):
    assert main(args) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def fresh_process(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         timeout=600, env={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error",
                                           "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_prune_save_reload_generate(default_model, tmp_path, capsys):
    out = tmp_path / "pruned"
    report = run_cli(["prune", "--target-params", "0.2", "--out", str(out), "--json"], capsys)
    assert report["ratio_params_removed"] == pytest.approx(0.2, abs=0.005)
    assert report["params_after"] < report["params_before"]
    assert report["macs_per_token_after"] < report["macs_per_token_before"]
    assert report["out"] == str(out) and (out / "model.safetensors").is_file()
    text = fresh_process(
        "from pruner import load_model\n"
        "from pruner.generate import generate_text, GenerationSettings\n"
        f"m, t = load_model({str(out)!r}, device='cpu')\n"
        "from pruner.stats import count_params\n"
        "assert m.lm_head.weight is m.model.embed_tokens.weight\n"
        "print(count_params(m)['params'])\n"
        "print(generate_text(m, t, 'The Leaning Tower of Pisa is known for', "
        "GenerationSettings(max_new_tokens=12, chat_template=False))['text'])\n")
    n_params, generated = text.split("\n", 1)
    assert int(n_params) == report["params_after"]
    assert len(generated.strip()) > 0


def test_uniform_prune_loads_with_plain_transformers(default_model, tmp_path, capsys):
    out = tmp_path / "uniform"
    run_cli(["prune", "--ratio", "0.25", "--no-attn", "--layers", "0:30", "--criterion", "l2",
             "--allocation", "uniform", "--out", str(out), "--json"], capsys)
    text = fresh_process(
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        f"m = AutoModelForCausalLM.from_pretrained({str(out)!r})\n"
        f"t = AutoTokenizer.from_pretrained({str(out)!r})\n"
        "ids = t('The Leaning Tower of Pisa is known for', return_tensors='pt')\n"
        "print(m.config.intermediate_size)\n"
        "print(t.decode(m.generate(**ids, max_new_tokens=8, do_sample=False)[0]))\n")
    width, generated = text.split("\n", 1)
    assert int(width) == 1152
    assert generated.startswith("The Leaning Tower of Pisa is known for")


def test_score_and_inspect(default_model, tmp_path, capsys):
    figures = run_cli(["score", "--criterion", "taylor-vector", "--out", str(tmp_path / "s.csv"),
                       "--json"], capsys)
    assert figures["rows"] == 30 * 3 + 30 * 1536
    info = run_cli(["inspect", "--layer", "5", "--json"], capsys)
    assert info["kv_heads"] == 3 and info["params"] == 134_515_008


def test_cli_errors_are_messages(capsys):
    assert main(["prune", "--model", "./missing-folder"]) == 2
    assert "does not exist" in capsys.readouterr().err
