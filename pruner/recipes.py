"""Named pruning recipes: a ScoreConfig + PruneConfig pair the CLI and dashboard start from.

"default" is the best recipe measured by bench/quality.py and bench/methods.py on the default
model at 20% of the parameters (see README: MLP channels only, ranked by squared first-order Taylor
(Molchanov et al. 2019) on down_proj alone, the early layers and the layers whose channels score
low cut deeper, each pruned down_proj refitted by damped least squares, pruner/refit.py).
"llm-pruner" reproduces the paper's block strategy: KV groups and MLP channels at one ratio,
element-wise first order summed over each group, no compensation.
"""

from __future__ import annotations

from dataclasses import asdict, replace

from .importance import ScoreConfig
from .prune import PruneConfig

RECIPES = {
    "default": (ScoreConfig(criterion="taylor-squared", aggregation="last"),
                PruneConfig(attn_share=0.0, attn_granularity="query-heads", compensate=True, refit=True,
                            allocation="depth", layer_spread=0.5, score_shape=1.0)),
    "llm-pruner": (ScoreConfig(criterion="taylor-element1", aggregation="sum"),
                   PruneConfig(attn_granularity="kv-group")),
    # The field's other methods on the same engine (coupled groups, slicing, exports); RECIPE_NOTES
    # says what each does differently and where it departs from its reference code.
    "flap": (ScoreConfig(criterion="fluctuation", aggregation="last"),
             PruneConfig(attn_granularity="query-heads", allocation="standardized",
                         compensate=True)),
    "wanda-sp": (ScoreConfig(criterion="wanda-sp", aggregation="last"),
                 PruneConfig(attn_granularity="query-heads")),
    # Minitron's published width models prune hidden (embedding) and MLP channels and keep the heads;
    # half the removed parameters from hidden channels is about Llama-3.1-Minitron-4B-Width's split
    # (hidden 4096 -> 3072, MLP 14336 -> 9216: 0.43-0.57, by which axis is counted first)
    "minitron": (ScoreConfig(criterion="activation", aggregation="last"),
                 PruneConfig(attn_share=0.0, attn_granularity="query-heads", hidden_share=0.5)),
    "shortgpt": (ScoreConfig(criterion="block-influence", aggregation="last"),
                 PruneConfig(strategy="layer")),
}

# name -> (citation, what it does differently), shown by the CLI's help and the page's recipe switch
RECIPE_NOTES = {
    "default": ("this project (bench/quality.py, bench/methods.py)",
                "MLP channels only, ranked by squared first-order Taylor on down_proj alone (sum (g*w)^2, "
                "Molchanov et al. 2019), the early layers cut "
                "deeper (per-layer ratios falling linearly with depth, from 1.5x the ratio at the first pruned "
                "layer to 0.5x at the last, each times the layers' geometric-mean median score over its own: "
                "a layer whose channels score low loses more); each pruned down_proj refitted (kept columns and "
                "a bias) by damped least squares to the dense layer's output on the pruned model's own "
                "propagated calibration inputs; calibrated by default on text the model samples itself (self-calibration, Williams et "
                "al. 2025), sampled plainly, with no top-p or top-k cut; other text continued by 192 tokens the model "
                "samples after each window (Ji et al. 2025)"),
    "llm-pruner": ("Ma, Fang, Wang 2023, arXiv 2305.11627",
                   "KV groups and MLP channels at one ratio per layer, element-wise first-order Taylor "
                   "summed over each group, no compensation"),
    "flap": ("An et al. 2024, FLAP, AAAI, arXiv 2312.11983",
             "fluctuation (variance of each input channel x its weight column's squared norm; attention's "
             "squared, as FLAP's code does), standardized per channel over each layer and averaged per "
             "head, one ranking across layers and between attention and MLP (adaptive widths), bias "
             "compensation; within the same layer ranges as every recipe (FLAP prunes all layers)"),
    "wanda-sp": ("the structured Wanda baseline of FLAP (An et al. 2024); Wanda: Sun et al. 2023, arXiv 2306.11695",
                 "|W| x the input's RMS per o_proj / down_proj column, averaged over rows and summed per "
                 "group, one ratio per layer for heads and MLP channels, no compensation; statistics from "
                 "the dense model in one pass (FLAP's code re-collects them layer by layer as it prunes)"),
    "minitron": ("Muralidharan et al. 2024, Compact Language Models via Pruning and Knowledge Distillation, "
                 "arXiv 2407.14679",
                 "activation-based importance on calibration text (an MLP channel's activation RMS, a hidden "
                 "channel's RMS wherever linears read the residual stream), width pruning of hidden "
                 "(embedding) and MLP channels as its published width models do (heads kept): half the removed "
                 "parameters from hidden channels first, then the MLPs, scored again, at one ratio per layer; "
                 "no architecture search, and recovery is this project's LoRA with distillation, not full "
                 "distillation training"),
    "shortgpt": ("Men et al. 2024, ShortGPT, arXiv 2403.03853",
                 "depth pruning: whole decoder layers with the lowest block influence (1 - cosine "
                 "similarity of each layer's input and output hidden states) removed"),
}


def recipe(name: str, score_overrides: dict | None = None,
           prune_overrides: dict | None = None) -> tuple[ScoreConfig, PruneConfig]:
    """The named recipe with explicit settings replacing its own (None values are ignored)."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; use one of {sorted(RECIPES)}")
    score_config, prune_config = RECIPES[name]
    score_config = replace(score_config, **{k: v for k, v in (score_overrides or {}).items() if v is not None})
    changes = {k: v for k, v in (prune_overrides or {}).items() if v is not None}
    if changes.get("unit") == "groups" and prune_config.attn_share is not None:
        changes.setdefault("attn_share", None)   # a share of parameters is what attention's share splits
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
