"""Save pruned models as standard safetensors folders, and load them back without remote code.

Uniform widths: config.json has the plain fields, so `AutoModelForCausalLM.from_pretrained(dir)`
loads it. Per-layer widths: config.json keeps valid envelope fields and records each layer's
widths under `pruning.layer_widths`; `load_pruned(dir)` (and `load_model(dir)`) rebuilds them.
The recipe (criterion, aggregation, ratio, layers, seed, calibration) is stored under
`pruning.recipe` in config.json and as pruning.json beside it.
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from .models import ModelLoadError, build_from_state, check_supported, pick_device, pick_dtype


def save(model, directory, tokenizer=None, recipe: dict | None = None) -> Path:
    """Write safetensors weights, config (with the pruning record), tokenizer and pruning.json."""
    out = Path(directory).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    record = dict(getattr(model.config, "pruning", None) or {})
    if recipe is not None:
        record["recipe"] = recipe
    model.config.pruning = record
    model.save_pretrained(out, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    (out / "pruning.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    return out


def _read_state(folder: Path) -> dict:
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"{folder} holds no .safetensors weights")
    state = {}
    for f in files:
        state.update(load_file(str(f)))
    return state


def _reshape_layers(widths: list[dict]):
    """A callback resizing each decoder layer's projections (on the meta device) to `widths`."""
    def reshape(model):
        layers = model.model.layers
        if len(widths) != len(layers):
            raise ModelLoadError(f"layer_widths lists {len(widths)} layers, config has {len(layers)}")
        hidden = model.config.hidden_size
        for layer, w in zip(layers, widths):
            attn, mlp = layer.self_attn, layer.mlp
            head_dim = attn.head_dim
            q, kv, inter = w["heads"] * head_dim, w["kv_heads"] * head_dim, w["intermediate_size"]

            def linear(old: nn.Linear, n_in: int, n_out: int) -> nn.Linear:
                return nn.Linear(n_in, n_out, bias=old.bias is not None, device="meta",
                                 dtype=old.weight.dtype)
            attn.q_proj = linear(attn.q_proj, hidden, q)
            attn.k_proj = linear(attn.k_proj, hidden, kv)
            attn.v_proj = linear(attn.v_proj, hidden, kv)
            attn.o_proj = linear(attn.o_proj, q, hidden)
            attn.num_key_value_groups = w["heads"] // w["kv_heads"]
            mlp.gate_proj = linear(mlp.gate_proj, hidden, inter)
            mlp.up_proj = linear(mlp.up_proj, hidden, inter)
            mlp.down_proj = linear(mlp.down_proj, inter, hidden)
            if hasattr(mlp, "intermediate_size"):
                mlp.intermediate_size = inter
    return reshape


def load_pruned(directory, device="auto", dtype=None):
    """Load a folder written by `save` -> (model, tokenizer); works for per-layer widths too."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder = Path(directory).expanduser()
    if not (folder / "config.json").is_file():
        raise ModelLoadError(f"{folder} is not a saved model folder (no config.json)")
    target = pick_device(device)
    torch_dtype = pick_dtype(target, dtype)
    config = AutoConfig.from_pretrained(folder, trust_remote_code=False)
    widths = (getattr(config, "pruning", None) or {}).get("layer_widths")
    if widths:
        state = {k: v.to(torch_dtype) for k, v in _read_state(folder).items()}
        model = build_from_state(config, state, torch_dtype, reshape=_reshape_layers(widths))
    else:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype,
                                                     trust_remote_code=False)
    check_supported(model)
    tokenizer = None
    if (folder / "tokenizer_config.json").is_file() or (folder / "tokenizer.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
    return model.to(target).eval(), tokenizer
