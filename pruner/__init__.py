"""Pruning Studio's engine: LLM-Pruner structural pruning for the decoder families of `arch.py`.

    from pruner import load_model, calibration_ids, recipe, prune_model, save
    model, tok = load_model("default")
    ids = calibration_ids(tok)      # 32 x 128 built-in tokens
    result = prune_model(model, ids, *recipe("default"))        # or recipe("llm-pruner")
    save(result.model, "out/pruned", tok)
"""

from .data import calibration_ids
from .export import load_pruned, save
from .groups import describe_groups, describe_layer, families
from .importance import AGGREGATIONS, CRITERIA, ScoreConfig, score
from .models import ModelLoadError, UnsupportedModelError, describe_model, load_model
from .prune import Plan, PruneConfig, PruneResult, apply_plan, make_plan, prune_model
from .recipes import RECIPES, recipe

__all__ = [
    "AGGREGATIONS", "CRITERIA", "ModelLoadError", "Plan", "PruneConfig", "PruneResult",
    "ScoreConfig", "UnsupportedModelError", "apply_plan", "calibration_ids", "describe_groups",
    "describe_layer", "describe_model", "families", "load_model", "load_pruned", "make_plan",
    "prune_model", "RECIPES", "recipe", "save", "score",
]
