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

from .models import load_pruned

__all__ = ["save", "load_pruned"]


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
