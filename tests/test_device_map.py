"""Models spread over devices with accelerate's hooks: scored and sliced where they are, and
disk-offloaded weights (which gradients cannot reach) refused with the reason. Without a GPU every
layer lands on the CPU, still behind accelerate's hooks, so the dispatched code path runs here."""

import json
import subprocess
import sys

import pytest
import torch

from pruner.models import ModelLoadError, load_model
from pruner.prune import prune_model
from pruner.recipes import recipe


def test_a_dispatched_model_is_scored_and_sliced_in_place(tiny_folder, calib):
    model, _ = load_model(tiny_folder, device_map="auto")
    assert hasattr(model.model.layers[0], "_hf_hook")                  # accelerate dispatched it
    assert all(p.device.type == "cpu" for p in model.parameters())      # nothing parked on "meta"
    reference, _ = load_model(tiny_folder, device="cpu")
    score_config, config = recipe("default", {"criterion": "taylor-element1"},
                                  {"attn_layers": (0, 2), "mlp_layers": (0, 2), "amount": 0.5,
                                   "unit": "groups"})
    config, _ = config.normalized(model)
    ids = calib % model.config.vocab_size
    dispatched = prune_model(model, ids, score_config, config, in_place=True)
    plain = prune_model(reference, ids, score_config, config, in_place=True)
    assert dispatched.report["params_after"] == plain.report["params_after"] < dispatched.report["params_before"]
    with torch.no_grad():
        torch.testing.assert_close(dispatched.model(ids).logits, plain.model(ids).logits)


def test_offloaded_weights_are_refused_with_the_reason(tiny_folder, tmp_path):
    device_map = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk",
                  "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}
    with pytest.raises(ModelLoadError, match="offloads 1 modules to disk .*gradients"):
        load_model(tiny_folder, device_map=device_map)


def test_cli_accepts_a_device_map(tiny_folder):
    run = subprocess.run([sys.executable, "-m", "pruner", "inspect", "--model", tiny_folder,
                          "--device-map", "auto", "--max-memory", "cpu=4GiB", "--json"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout.strip().splitlines()[-1])["layers"] == 2
