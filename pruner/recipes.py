"""Named pruning recipes: a ScoreConfig + PruneConfig pair the CLI and dashboard start from.

"default" is the best recipe measured by bench/quality.py on the default model at 20% of the
parameters (see README: MLP channels only, ranked by first-order Taylor on down_proj alone,
with the removed channels' mean output folded into a bias). "llm-pruner" reproduces the
paper's block strategy: KV groups and MLP channels at one ratio, element-wise first order
summed over each group, no compensation.
"""

from __future__ import annotations

from dataclasses import asdict, replace

from .importance import ScoreConfig
from .prune import PruneConfig

RECIPES = {
    "default": (ScoreConfig(criterion="taylor-element1", aggregation="last"),
                PruneConfig(target_params=0.2, attn_share=0.0, attn_granularity="query-heads",
                            compensate=True)),
    "llm-pruner": (ScoreConfig(criterion="taylor-element1", aggregation="sum"),
                   PruneConfig(target_params=0.2, attn_granularity="kv-group")),
}


def recipe(name: str, score_overrides: dict | None = None,
           prune_overrides: dict | None = None) -> tuple[ScoreConfig, PruneConfig]:
    """The named recipe with explicit settings replacing its own (None values are ignored)."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; use one of {sorted(RECIPES)}")
    score_config, prune_config = RECIPES[name]
    score_config = replace(score_config, **{k: v for k, v in (score_overrides or {}).items() if v is not None})
    changes = {k: v for k, v in (prune_overrides or {}).items() if v is not None}
    if "ratio" in changes and "target_params" not in changes:
        changes["target_params"] = None           # a group ratio replaces the recipe's parameter target
        if prune_config.attn_share is not None:
            changes.setdefault("attn_share", None)
    return score_config, replace(prune_config, **changes)


def recipe_record(score_config: ScoreConfig, prune_config: PruneConfig, calibration: dict | None,
                  base_model: str, group_ratios: list[float] | None = None, preset: str | None = None,
                  notes: list[str] | None = None) -> dict:
    """The one schema both fronts store with an export (config.json `pruning.recipe`, pruning.json).

    calibration: {"source", "samples", "seq_len", "seed"} or None when nothing read calibration text.
    """
    prune = asdict(prune_config)
    for key in ("attn_layers", "mlp_layers"):
        prune[key] = list(prune[key]) if prune[key] is not None else "default"
    return {"preset": preset, "base_model": base_model,
            "score": {"criterion": score_config.criterion, "aggregation": score_config.aggregation,
                      "seed": score_config.seed},
            "prune": prune, "group_ratios": list(group_ratios or []), "calibration": calibration,
            "notes": list(notes or [])}


def with_recovery(record: dict, settings, steps: int, data: str) -> dict:
    """`record` (a recipe_record) with the LoRA recovery that followed it, in the same schema."""
    return {**record, "recovery": {**asdict(settings), "steps": int(steps), "data": data}}
