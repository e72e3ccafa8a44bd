"""Save pruned models as standard safetensors folders, and load them back without remote code.

Uniform widths: config.json has the plain fields, so `AutoModelForCausalLM.from_pretrained(dir)`
loads it. Per-layer widths: config.json keeps valid envelope fields and records each layer's
widths under `pruning.layer_widths`; `load_pruned(dir)` (and `load_model(dir)`) rebuilds them
(`models.load_pruned`, re-exported here).
The recipe (criterion, aggregation, ratio, layers, seed, calibration) is stored under
`pruning.recipe` in config.json and as pruning.json beside it.
"""

from __future__ import annotations

import json
from pathlib import Path

from .arch import arch_of
from .card import model_card
from .models import load_pruned

__all__ = ["save", "load_pruned", "loader_of"]


REMOTE_MODELING = Path(__file__).with_name("remote_modeling.py")
BASE_LINE = "from transformers import LlamaForCausalLM as _Base"


def structure_record(arch) -> dict:
    """The projection paths a per-layer-width export's modeling file needs (from `arch.py`)."""
    return {"q": arch.q, "k": arch.k, "v": arch.v, "qkv": arch.qkv, "o": arch.o, "gate": arch.gate,
            "up": arch.up, "gate_up": arch.gate_up, "down": arch.down,
            "head_norms": list(arch.head_norms) if arch.head_norms else None,
            "head_norms_full_width": arch.head_norms_full_width, "heads_from_config": arch.heads_from_config}


def _write_modeling_file(model, out: Path) -> None:
    """modeling_pruned.py: the family's own class, resized per layer (for trust_remote_code=True)."""
    text = REMOTE_MODELING.read_text()
    base = type(model).__name__
    text = text.replace(BASE_LINE, f"from transformers import {base} as _Base", 1)
    (out / "modeling_pruned.py").write_text(text)


def save(model, directory, tokenizer=None, recipe: dict | None = None, stats: dict | None = None,
         max_shard_size: int | str = "5GB") -> Path:
    """Write safetensors weights, config (with the pruning record), tokenizer and pruning.json.

    Per-layer widths: config.json also gets `auto_map` to the modeling_pruned.py written beside it,
    so `AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)` loads the export where
    this project is not installed; `pruner.load_model(dir)` loads it without remote code.
    A Hub-style model card (README.md) describes the recipe and `stats` (see `card.card_stats`).
    `max_shard_size` splits the weights into several safetensors files (transformers' index).
    """
    out = Path(directory).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    record = dict(getattr(model.config, "pruning", None) or {})
    if recipe is not None:
        record["recipe"] = recipe
    config = model.config
    if record.get("layer_widths"):
        record["structure"] = structure_record(arch_of(model))
        config.auto_map = {"AutoModelForCausalLM": "modeling_pruned.PrunedForCausalLM"}
        _write_modeling_file(model, out)
    else:
        record.pop("structure", None)
        if getattr(config, "auto_map", None):
            config.auto_map = None
        (out / "modeling_pruned.py").unlink(missing_ok=True)
    config.pruning = record
    model.save_pretrained(out, safe_serialization=True, max_shard_size=max_shard_size)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    (out / "pruning.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    (out / "README.md").write_text(model_card(json.loads(json.dumps(record, default=str)), stats,
                                              per_layer=bool(record.get("layer_widths"))))
    return out


def loader_of(directory) -> str:
    """How an export loads outside this project: a sentence for the CLI and the dashboard."""
    record = json.loads((Path(directory) / "config.json").read_text()).get("pruning", {})
    if record.get("layer_widths"):
        return ("per-layer widths: AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True) "
                "(the export carries modeling_pruned.py), or pruner.load_model(dir) without remote code")
    return "uniform widths: AutoModelForCausalLM.from_pretrained(dir) in plain transformers"
